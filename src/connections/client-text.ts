// What a client sent, made safe for a log line: quoted (so a newline or a control character
// cannot forge another line or field) and cut short (so a client cannot fill the journal).

const SHOWN_CHARS = 64;

export function clientText(text: string): string {
  const cut = text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}...` : text;
  // JSON escapes quotes, backslashes and every control character; the rest is escaped too.
  return JSON.stringify(cut).replace(
    /[\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

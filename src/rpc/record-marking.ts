// ONC RPC record marking (RFC 5531 section 11) over a stream: each record is one or more
// fragments, each behind a 4-byte header whose top bit marks the last fragment and whose
// low 31 bits give its length. Reassembly is bounded before anything is buffered.

const LAST_FRAGMENT = 0x80000000;

export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RecordError";
  }
}

export interface RecordLimits {
  /** Largest record accepted, all fragments together. */
  maxRecordBytes: number;
  /** Most fragments in one record (zero-length fragments count too). */
  maxFragments: number;
}

export class RecordAssembler {
  readonly #limits: RecordLimits;
  /** Received bytes not yet consumed: at most one header and fragment plus one read. */
  #pending: Buffer = Buffer.alloc(0);
  /** Completed fragments of the record being assembled. */
  #fragments: Buffer[] = [];
  #recordBytes = 0;

  constructor(limits: RecordLimits) {
    this.#limits = limits;
  }

  /** Bytes held for a record not yet complete. */
  get bufferedBytes(): number {
    return this.#pending.length + this.#recordBytes;
  }

  /** Keeps bytes as they arrive; records are taken out one at a time with next(). */
  append(chunk: Buffer): void {
    this.#pending = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
  }

  /**
   * The next complete record, or null until more bytes arrive. Throws RecordError as soon
   * as a header announces more than the limits allow: the stream cannot be resynchronised,
   * so the caller must close the connection.
   */
  next(): Buffer | null {
    while (this.#pending.length >= 4) {
      const word = this.#pending.readUInt32BE(0);
      const length = word & 0x7fffffff;
      if (this.#recordBytes + length > this.#limits.maxRecordBytes) {
        throw new RecordError(
          `record of at least ${this.#recordBytes + length} bytes exceeds the limit of ${this.#limits.maxRecordBytes}`,
        );
      }
      if (this.#fragments.length + 1 > this.#limits.maxFragments) {
        throw new RecordError(`record of more than ${this.#limits.maxFragments} fragments`);
      }
      if (this.#pending.length < 4 + length) return null;
      this.#fragments.push(Buffer.from(this.#pending.subarray(4, 4 + length)));
      this.#recordBytes += length;
      this.#pending = this.#pending.subarray(4 + length);
      if (word & LAST_FRAGMENT) {
        const record = this.#fragments.length === 1 ? (this.#fragments[0] as Buffer) : Buffer.concat(this.#fragments);
        this.#fragments = [];
        this.#recordBytes = 0;
        return record;
      }
    }
    return null;
  }

  /** append, then every record completed by it, in order (throws as next() does). */
  push(chunk: Buffer): Buffer[] {
    this.append(chunk);
    const records: Buffer[] = [];
    for (let record = this.next(); record !== null; record = this.next()) records.push(record);
    return records;
  }
}

/** Frames `payload` as one record, split into fragments of at most `fragmentBytes`. */
export function frameRecord(payload: Buffer, fragmentBytes = 0x7fffffff): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  do {
    const length = Math.min(fragmentBytes, payload.length - offset);
    const header = Buffer.alloc(4);
    const last = offset + length >= payload.length;
    header.writeUInt32BE(((last ? LAST_FRAGMENT : 0) | length) >>> 0);
    parts.push(header, payload.subarray(offset, offset + length));
    offset += length;
  } while (offset < payload.length);
  return Buffer.concat(parts);
}

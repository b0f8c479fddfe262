// XDR (RFC 4506), the subset ONC RPC and the persistence protocol use: 4-byte integers and
// length-prefixed opaque data padded to 4 bytes. Every read is bounds-checked.

export class XdrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "XdrError";
  }
}

export class XdrReader {
  readonly #buf: Buffer;
  #offset: number;

  constructor(buf: Buffer, offset = 0) {
    this.#buf = buf;
    this.#offset = offset;
  }

  get remaining(): number {
    return this.#buf.length - this.#offset;
  }

  #need(bytes: number, what: string): void {
    if (this.remaining < bytes) throw new XdrError(`truncated ${what}: need ${bytes} bytes, have ${this.remaining}`);
  }

  u32(what = "unsigned int"): number {
    this.#need(4, what);
    const value = this.#buf.readUInt32BE(this.#offset);
    this.#offset += 4;
    return value;
  }

  i32(what = "int"): number {
    this.#need(4, what);
    const value = this.#buf.readInt32BE(this.#offset);
    this.#offset += 4;
    return value;
  }

  /** Variable-length opaque of at most `max` bytes (the length is checked before any copy). */
  opaque(max: number, what = "opaque"): Buffer {
    const length = this.u32(`${what} length`);
    if (length > max) throw new XdrError(`${what} of ${length} bytes exceeds its maximum of ${max}`);
    const padded = (length + 3) & ~3;
    this.#need(padded, what);
    const value = this.#buf.subarray(this.#offset, this.#offset + length);
    this.#offset += padded;
    return value;
  }
}

export class XdrWriter {
  readonly #parts: Buffer[] = [];

  u32(value: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(value >>> 0);
    this.#parts.push(b);
    return this;
  }

  i32(value: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(value | 0);
    this.#parts.push(b);
    return this;
  }

  opaque(data: Buffer): this {
    this.u32(data.length);
    this.#parts.push(data, Buffer.alloc((4 - (data.length % 4)) % 4));
    return this;
  }

  bytes(): Buffer {
    return Buffer.concat(this.#parts);
  }
}

/**
 * File names as Linux has them: bytes, most often UTF-8 but not always (a Latin-1 `café` from an
 * old archive or a Samba share is `caf\xe9`). A name is read into a string by UTF-8 where it is
 * UTF-8, and each byte that is not becomes the lone surrogate U+DC00 + byte (U+DC80 to U+DCFF,
 * Python's `surrogateescape`): two names that differ stay two strings, and the bytes can be had back.
 */

/** how many bytes the UTF-8 sequence at `i` has, 0 when the byte there does not start a valid one (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF) */
const sequenceAt = (bytes: Uint8Array, i: number): number => {
  const b = bytes[i] ?? 0
  const within = (k: number, low = 0x80, high = 0xbf): boolean => {
    const c = bytes[i + k]
    return c !== undefined && c >= low && c <= high
  }
  if (b < 0x80) return 1
  if (b >= 0xc2 && b <= 0xdf) return within(1) ? 2 : 0
  if (b >= 0xe0 && b <= 0xef) {
    const second = b === 0xe0 ? within(1, 0xa0) : b === 0xed ? within(1, 0x80, 0x9f) : within(1)
    return second && within(2) ? 3 : 0
  }
  if (b >= 0xf0 && b <= 0xf4) {
    const second = b === 0xf0 ? within(1, 0x90) : b === 0xf4 ? within(1, 0x80, 0x8f) : within(1)
    return second && within(2) && within(3) ? 4 : 0
  }
  return 0
}

/**
 * A file name's bytes as a string: UTF-8, and each byte that is not UTF-8 as U+DC00 + byte.
 * @example
 * decodeFileName(Buffer.from('café')) // 'café'
 * decodeFileName(Buffer.from([0x63, 0x61, 0x66, 0xe9])) // 'caf\udce9'
 */
export const decodeFileName = (bytes: Uint8Array): string => {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8')
  if (!text.includes('\uFFFD')) return text
  let out = ''
  for (let i = 0; i < bytes.length;) {
    const n = sequenceAt(bytes, i)
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + (bytes[i] ?? 0))
      i += 1
    } else {
      out += Buffer.from(bytes.subarray(i, i + n)).toString('utf8')
      i += n
    }
  }
  return out
}

/**
 * The bytes of a name {@link decodeFileName} made, for `fs` calls, which take a Buffer as a path:
 * each U+DC80 to U+DCFF is its byte again.
 * @example
 * await fs.readFile(fileNameBytes(entry.path))
 */
export const fileNameBytes = (name: string): Buffer => {
  const parts: Buffer[] = []
  let plain = ''
  for (const c of name) {
    const code = c.codePointAt(0) ?? 0
    if (code >= 0xdc80 && code <= 0xdcff) {
      parts.push(Buffer.from(plain, 'utf8'), Buffer.from([code - 0xdc00]))
      plain = ''
    } else {
      plain += c
    }
  }
  parts.push(Buffer.from(plain, 'utf8'))
  return Buffer.concat(parts)
}

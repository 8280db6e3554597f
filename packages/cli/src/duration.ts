/** `90m`, `26h`, `2d`, `1w` in seconds; undefined when it is not such a duration */
export const parseDuration = (text: string): number | undefined => {
  const m = /^(\d+)\s*(m|min|h|d|w)$/.exec(text.trim())
  if (m === null) return undefined
  const unit: Readonly<Record<string, number>> = { m: 60, min: 60, h: 3600, d: 86400, w: 7 * 86400 }
  return Number(m[1]) * (unit[m[2] ?? ''] ?? 0)
}

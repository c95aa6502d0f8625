export function rate(value) {
  if (value === null || value === undefined) return '—'
  return value >= 100 ? value.toFixed(0) : value.toFixed(2)
}

export function percent(value) {
  if (value === null || value === undefined) return '—'
  return `${(value * 100).toFixed(value > 0 && value < 0.01 ? 2 : 1)}%`
}

export function ms(value) {
  if (value === null || value === undefined) return '—'
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ms`
}

export function when(iso) {
  if (!iso) return '—'
  const date = new Date(iso)
  return date.toLocaleString()
}

export function fromNow(iso) {
  if (!iso) return '—'
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000)
  const abs = Math.abs(seconds)
  const [n, unit] =
    abs < 120 ? [abs, 's'] : abs < 7200 ? [Math.round(abs / 60), 'min'] : abs < 172800 ? [Math.round(abs / 3600), 'h'] : [Math.round(abs / 86400), 'd']
  return seconds >= 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`
}

// The control plane's REST API, on the origin that served the UI. A token (a user token from
// `isthmus generate user-token`) is asked for when the API answers 401, kept in sessionStorage and sent as Bearer.
import { reactive } from 'vue'

const KEY = 'isthmus.token'

export const auth = reactive({
  token: sessionStorage.getItem(KEY) || '',
  needed: false,
  error: '',
})

export function setToken(token) {
  auth.token = token.trim()
  if (auth.token) sessionStorage.setItem(KEY, auth.token)
  else sessionStorage.removeItem(KEY)
  auth.needed = false
  auth.error = ''
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`)
    this.status = status
    this.body = body
  }
}

export async function api(path) {
  const headers = { Accept: 'application/json' }
  if (auth.token) headers.Authorization = `Bearer ${auth.token}`
  const response = await fetch(path, { headers })
  let body = null
  try {
    body = await response.json()
  } catch {
    body = null
  }
  if (response.status === 401) {
    auth.needed = true
    auth.error = auth.token ? (body && body.detail) || 'the token was refused' : ''
  }
  if (!response.ok) throw new ApiError(response.status, body)
  return body
}

// Every page of a list (the API pages by 100 by default)
export async function apiAll(path, limit = 1000) {
  const items = []
  let next = path + (path.includes('?') ? '&' : '?') + 'size=100'
  while (next && items.length < limit) {
    const page = await api(next.replace(/^https?:\/\/[^/]+/, ''))
    items.push(...page.items)
    next = page.next
  }
  return items
}

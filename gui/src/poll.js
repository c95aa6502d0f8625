// Live data: a page re-reads what it shows every few seconds (policy changes show up without a reload).
import { onBeforeUnmount, onMounted, ref, watch } from 'vue'

export const POLL_MS = 2500

export function usePoll(load, deps = []) {
  const data = ref(null)
  const error = ref(null)
  const loading = ref(true)
  let timer = null
  let running = false

  async function refresh() {
    if (running) return
    running = true
    try {
      data.value = await load()
      error.value = null
    } catch (e) {
      error.value = e
    } finally {
      loading.value = false
      running = false
    }
  }

  onMounted(() => {
    refresh()
    timer = setInterval(refresh, POLL_MS)
  })
  onBeforeUnmount(() => clearInterval(timer))
  if (deps.length) {
    watch(deps, () => {
      loading.value = true
      data.value = null
      refresh()
    })
  }
  return { data, error, loading, refresh }
}

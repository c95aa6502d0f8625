import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// Built into the Python package: the control plane serves these files at /gui (src/isthmus/cp/api/gui.py).
export default defineConfig({
  base: '/gui/',
  plugins: [vue()],
  build: {
    outDir: fileURLToPath(new URL('../src/isthmus/gui_dist', import.meta.url)),
    emptyOutDir: true,
    chunkSizeWarningLimit: 900,
    reportCompressedSize: false,
  },
  server: {
    // `npm run dev`: the API of a control plane on the default port
    proxy: Object.fromEntries(
      ['/meshes', '/zones+insights', '/gateway', '/_resources', '/global-insight'].map((p) => [p, 'http://127.0.0.1:5681']),
    ),
  },
})

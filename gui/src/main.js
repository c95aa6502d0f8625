import { createApp } from 'vue'
import { createRouter, createWebHistory } from 'vue-router'
import '@kong/kongponents/dist/style.css'
import './style.css'
import App from './App.vue'
import Home from './pages/Home.vue'
import Dataplanes from './pages/Dataplanes.vue'
import Services from './pages/Services.vue'
import Policies from './pages/Policies.vue'
import Topology from './pages/Topology.vue'
import Gateway from './pages/Gateway.vue'
import ResourceYaml from './pages/ResourceYaml.vue'

const router = createRouter({
  history: createWebHistory('/gui/'),
  routes: [
    { path: '/', name: 'home', component: Home },
    { path: '/meshes/:mesh/dataplanes', name: 'dataplanes', component: Dataplanes },
    { path: '/meshes/:mesh/services', name: 'services', component: Services },
    { path: '/meshes/:mesh/policies', name: 'policies', component: Policies },
    { path: '/meshes/:mesh/topology', name: 'topology', component: Topology },
    { path: '/gateway/:workspace?', name: 'gateway', component: Gateway },
    { path: '/yaml/:path(.*)', name: 'yaml', component: ResourceYaml },
    { path: '/:rest(.*)', redirect: '/' },
  ],
})

createApp(App).use(router).mount('#app')

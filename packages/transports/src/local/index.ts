export { localTransport } from './local-transport.js'

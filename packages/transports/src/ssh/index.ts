export { sshTransport } from './ssh-transport.js'
export { openSshSession } from './session.js'
export type { SshConnection, SshOptions, SshSession } from './session.js'
export { remoteCommand, shQuote } from './quote.js'

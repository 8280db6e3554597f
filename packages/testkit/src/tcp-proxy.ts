import { connect, createServer, type Socket } from 'node:net'

/** A TCP proxy on 127.0.0.1 that can go silent, as a network partition does. */
export interface TcpProxy {
  readonly port: number
  /**
   * From now on nothing passes, either way, and nothing is closed or reset: data is read and
   * dropped, new connections are accepted and hear nothing, as behind a link that went down.
   */
  drop(): void
  /** The link is back: new connections pass again; the ones that lived through the silence are closed (their streams lost bytes). */
  heal(): void
  /** bytes passed on so far, from the clients to the server and back */
  passed(): { readonly up: number; readonly down: number }
  stop(): Promise<void>
}

/**
 * Forwards every connection to `toPort` on 127.0.0.1 until told to {@link TcpProxy.drop}.
 * @example
 * const proxy = await startTcpProxy(sshd.port)
 * try { ... proxy.drop() ... proxy.heal() ... } finally { await proxy.stop() }
 */
export const startTcpProxy = async (toPort: number): Promise<TcpProxy> => {
  let dropped = false
  const passed = { up: 0, down: 0 }
  const pairs = new Set<readonly [Socket, Socket]>()
  const server = createServer((client) => {
    const upstream = connect(toPort, '127.0.0.1')
    const pair = [client, upstream] as const
    pairs.add(pair)
    const end = (): void => {
      pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    for (const [from, to, way] of [[client, upstream, 'up'], [upstream, client, 'down']] as const) {
      from.on('data', (chunk: Buffer) => {
        if (dropped) return
        passed[way] += chunk.length
        to.write(chunk)
      })
      from.on('error', end)
      // a close is passed on only while the link is up: behind a dead link the other side never hears of it
      from.on('close', () => {
        if (!dropped) end()
      })
    }
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const address = server.address()
  if (typeof address !== 'object' || address === null) throw new Error('the proxy has no port')
  return {
    port: address.port,
    drop: () => {
      dropped = true
    },
    heal: () => {
      dropped = false
      for (const [a, b] of [...pairs]) {
        a.destroy()
        b.destroy()
      }
      pairs.clear()
    },
    passed: () => ({ ...passed }),
    stop: async () => {
      for (const [a, b] of pairs) {
        a.destroy()
        b.destroy()
      }
      pairs.clear()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

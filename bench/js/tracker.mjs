// The WebTorrent reference tracker (npm `bittorrent-tracker`), websocket
// only, on a loopback port. Started by the benchmark (bench/src/signaling.rs)
// as the baseline for relaying WebRTC offers and answers. Prints one JSON
// line `{"port": N}` once it listens; runs until killed.
// The server module alone: the package's index also loads the WebRTC client
// stack, whose native part is not needed (nor built) here.
import Server from 'bittorrent-tracker/server'

const port = Number(process.argv[2] ?? 0)
const server = new Server({ udp: false, http: false, ws: true, stats: false })
server.on('error', (error) => {
  console.error(`tracker: ${error.message}`)
  process.exit(1)
})
// Bad requests are the load generator's problem; the benchmark counts what
// arrives, so the tracker's per-request warnings are not printed.
server.on('warning', () => {})
server.listen(port, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.ws.address().port }))
})

// The official Phoenix JavaScript client against our server: a host and a
// visitor join, the visitor asks for the page, the host relays it, and
// heartbeats are answered. Prints one JSON line of what it saw.
import { Socket } from "phoenix";
import WebSocket from "ws";

const [endpoint, page, hash] = process.argv.slice(2);
const seen = { hostJoin: null, visitorJoin: null, request: null, routed: null, content: null, heartbeatReplies: 0 };

const fail = (why) => {
  console.log(JSON.stringify({ error: why, seen }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 10000);

const connect = () => {
  const socket = new Socket(endpoint, { transport: WebSocket, heartbeatIntervalMs: 100 });
  socket.connect();
  return socket;
};

const hostSocket = connect();
hostSocket.onMessage(({ topic, event }) => {
  if (topic === "phoenix" && event === "phx_reply") seen.heartbeatReplies += 1;
});
const have = hostSocket.channel(`have:${hash}`, {});
have.on("content_request", (payload) => {
  seen.request = payload;
  have.push("content", { content: page }).receive("error", (e) => fail(`content refused: ${JSON.stringify(e)}`));
});
have.join()
  .receive("error", (e) => fail(`host join: ${JSON.stringify(e)}`))
  .receive("ok", (response) => {
    seen.hostJoin = response;
    const visitorSocket = connect();
    const want = visitorSocket.channel(`want:${hash}`, {});
    want.on("content", ({ content }) => {
      seen.content = content;
      // Give heartbeats a moment, then report.
      setTimeout(() => {
        console.log(JSON.stringify(seen));
        process.exit(0);
      }, 350);
    });
    want.join()
      .receive("error", (e) => fail(`visitor join: ${JSON.stringify(e)}`))
      .receive("ok", (response) => {
        seen.visitorJoin = response;
        want.push("content_request", { relay: true })
          .receive("ok", (routed) => { seen.routed = routed; })
          .receive("error", (e) => fail(`request: ${JSON.stringify(e)}`));
      });
  });

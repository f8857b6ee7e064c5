// Preloaded by bench/gateway.py (`node --import ./loopback.mjs ...`): the Portkey gateway
// calls server.listen(port) with no host, which listens on every interface; this makes it
// listen on 127.0.0.1 only, so the benchmark never opens a port beyond loopback.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args[1] === undefined || typeof args[1] === "function")) {
    const callback = typeof args[1] === "function" ? args[1] : args[2];
    return listen.call(this, args[0], "127.0.0.1", callback);
  }
  return listen.apply(this, args);
};

// Closed-loop HTTP load for the Node cluster of ksm-planner's live validation harness.
//
//   node node_load.js --url http://127.0.0.1:PORT --concurrency C [--search-every N] [--stats PATH]
//
// C requests in flight at all times over keep-alive connections: GET /item?id=<random>, and
// every N-th request GET /search?q=<word>. Runs until SIGTERM/SIGINT, then writes
// {"requests", "errors", "elapsed_s"} to --stats (if given) and exits.
"use strict";
const http = require("node:http");
const fs = require("node:fs");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const url = new URL(arg("--url", "http://127.0.0.1:8080"));
const concurrency = Number(arg("--concurrency", "8"));
const searchEvery = Number(arg("--search-every", "20"));
const statsPath = arg("--stats", "");
const WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"];
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const t0 = Date.now();
let requests = 0, errors = 0, n = 0, stopping = false;

function one() {
  if (stopping) return;
  n++;
  const path = n % searchEvery === 0
    ? "/search?q=" + WORDS[n % WORDS.length]
    : "/item?id=" + Math.floor(Math.random() * 1e6);
  const req = http.get({ host: url.hostname, port: url.port, path, agent }, (res) => {
    res.resume();
    res.on("end", () => { requests++; setImmediate(one); });
  });
  req.on("error", () => { errors++; setTimeout(one, 50); });
}
for (let i = 0; i < concurrency; i++) one();
function stop() {
  stopping = true;
  if (statsPath) {
    fs.writeFileSync(statsPath, JSON.stringify({ requests, errors, elapsed_s: (Date.now() - t0) / 1000 }) + "\n");
  }
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

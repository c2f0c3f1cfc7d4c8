// Closed-loop HTTP load for the Node cluster of ksm-planner's live validation harness.
//
//   node node_load.js --url http://127.0.0.1:PORT [--url ...] --concurrency C [--rate R]
//                     [--search-every N] [--stats PATH]
//
// Several --url: the requests go to them in turn (servers that do not share a port).
// Without --rate (closed loop): C requests in flight at all times over keep-alive connections.
// With --rate R (open loop): R requests per second, started on a 10 ms tick, at most C in
// flight (up to C due requests wait for a free slot; beyond that they are dropped and
// counted as "late").
// Requests: GET /item?id=<random>, and every N-th request GET /search?q=<word>. Runs until
// SIGTERM/SIGINT, then writes {"requests", "errors", "late", "elapsed_s", "mode"} to --stats
// (if given) and exits.
"use strict";
const http = require("node:http");
const fs = require("node:fs");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const urls = process.argv.flatMap((a, i) => (a === "--url" && i + 1 < process.argv.length
  ? [new URL(process.argv[i + 1])] : []));
if (urls.length === 0) urls.push(new URL("http://127.0.0.1:8080"));
const concurrency = Number(arg("--concurrency", "8"));
const searchEvery = Number(arg("--search-every", "20"));
const statsPath = arg("--stats", "");
const rate = Number(arg("--rate", "0"));
const WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"];
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const t0 = Date.now();
let requests = 0, errors = 0, late = 0, n = 0, inflight = 0, stopping = false;

function one() {
  if (stopping) return;
  n++;
  inflight++;
  const path = n % searchEvery === 0
    ? "/search?q=" + WORDS[n % WORDS.length]
    : "/item?id=" + Math.floor(Math.random() * 1e6);
  const url = urls[n % urls.length];
  const req = http.get({ host: url.hostname, port: url.port, path, agent }, (res) => {
    res.resume();
    res.on("end", () => { requests++; inflight--; next(); });
  });
  req.on("error", () => { errors++; inflight--; setTimeout(next, 50); });
}
let budget = 0;
function next() {
  if (rate <= 0) { setImmediate(one); return; }   // closed loop: replace the finished request
  while (budget >= 1 && inflight < concurrency) { budget--; one(); }
}
if (rate > 0) {
  setInterval(() => {
    budget += rate / 100;
    if (budget > concurrency) { late += Math.floor(budget - concurrency); budget = concurrency; }
    next();
  }, 10);
} else {
  for (let i = 0; i < concurrency; i++) one();
}
function stop() {
  stopping = true;
  if (statsPath) {
    fs.writeFileSync(statsPath, JSON.stringify({ requests, errors, late, elapsed_s: (Date.now() - t0) / 1000,
      mode: rate > 0 ? "open loop " + rate + "/s" : "closed loop" }) + "\n");
  }
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

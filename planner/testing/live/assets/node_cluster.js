// A Node.js cluster with per-worker state, for ksm-planner's live validation harness.
//
//   node node_cluster.js --port PORT --workers N [--items K] [--ready-file PATH]
//
// The primary forks N workers (cluster module); they share PORT (round-robin by the primary).
// Each worker builds, at start:
//   * a catalogue of K items built from a fixed seed: the same objects in every worker (V8
//     lays them out differently per isolate, so only part of it is byte-identical);
//   * a per-worker cache of K/4 entries from a per-worker random seed (unique content);
// and then serves GET /item?id=I (JSON of an item with a rendered description),
// GET /search?q=S (filters the catalogue: allocates, so the heap grows and the GC shrinks
// it), and GET /health. Each request also bumps per-worker counters (written state).
// When every worker listens, the primary writes "ready <pid>..." to --ready-file.
"use strict";
const cluster = require("node:cluster");
const http = require("node:http");
const fs = require("node:fs");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const port = Number(arg("--port", "0"));
const workers = Number(arg("--workers", "4"));
const items = Number(arg("--items", "40000"));
const readyFile = arg("--ready-file", "");

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega".split(" ");

if (cluster.isPrimary) {
  const ready = new Set();
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("message", (w, msg) => {
    if (msg === "listening") {
      ready.add(w.process.pid);
      if (ready.size === workers && readyFile) {
        fs.writeFileSync(readyFile + ".tmp", "ready " + [...ready].join(" ") + "\n");
        fs.renameSync(readyFile + ".tmp", readyFile);
      }
    }
  });
  let stopping = false;
  const stop = () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].process.kill("SIGTERM");
    setTimeout(() => process.exit(0), 2000).unref();
  };
  cluster.on("exit", () => {
    if (stopping && Object.keys(cluster.workers).length === 0) process.exit(0);
  });
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  const shared = rng(42);
  const catalogue = [];
  for (let i = 0; i < items; i++) {
    const words = [];
    for (let j = 0; j < 8; j++) words.push(WORDS[Math.floor(shared() * WORDS.length)]);
    catalogue.push({ id: i, name: "item-" + i, price: Math.floor(shared() * 100000) / 100,
      tags: words.slice(0, 3), text: words.join(" ") });
  }
  const own = rng((process.pid * 2654435761) >>> 0);
  const cache = new Map();
  for (let i = 0; i < items / 4; i++) {
    cache.set("k" + i, { v: own(), s: Math.floor(own() * 1e9).toString(36).repeat(4) });
  }
  const counters = { requests: 0, bytes: 0, searches: 0 };
  const server = http.createServer((req, res) => {
    counters.requests++;
    const url = new URL(req.url, "http://x");
    let body;
    if (url.pathname === "/item") {
      const it = catalogue[Number(url.searchParams.get("id")) % items] || catalogue[0];
      const c = cache.get("k" + (it.id % (items / 4)));
      body = JSON.stringify({ ...it, description: it.text.toUpperCase() + " " + it.price.toFixed(2),
        score: c ? c.v : 0, served: counters.requests });
    } else if (url.pathname === "/search") {
      counters.searches++;
      const q = url.searchParams.get("q") || "alpha";
      const hits = catalogue.filter((x) => x.text.includes(q)).slice(0, 50).map((x) => ({ id: x.id, name: x.name }));
      body = JSON.stringify({ q, n: hits.length, hits });
    } else {
      body = JSON.stringify({ ok: true, pid: process.pid, ...counters });
    }
    counters.bytes += body.length;
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
  server.keepAliveTimeout = 60000;
  server.listen(port, "127.0.0.1", () => process.send("listening"));
  process.on("SIGTERM", () => server.close(() => process.exit(0)));
  setTimeout(() => {}, 1 << 30); // keep alive even without connections
}

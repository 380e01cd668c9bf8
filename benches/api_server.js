// A local API that answers every request at once, for benches/api.py.
//
//   node benches/api_server.js PORT [DUMP_DIR]
//
// Every request's body is read whole; the answer is `200 {}`. With DUMP_DIR, the first body of
// each method and path shape is written there (for the wrk baseline to send the same bytes).
// GET /__stats answers the number of requests and body bytes received so far.
"use strict";
const http = require("http");
const fs = require("fs");
const path = require("path");

const port = Number(process.argv[2]);
const dump = process.argv[3];
let requests = 0;
let bytes = 0;
const dumped = new Set();

http
  .createServer((req, res) => {
    if (req.url === "/__stats") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ requests, bytes }));
      return;
    }
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      requests += 1;
      const body = Buffer.concat(chunks);
      bytes += body.length;
      if (dump) {
        // /customers/123 and /customers/batch: one shape per method and first path segment
        // plus whether the path names a record.
        const parts = req.url.split("/").filter(Boolean);
        const shape = `${req.method}_${parts[0] || "root"}_${parts.length > 1 ? parts[1].replace(/[0-9]+/, "ID") : ""}`;
        if (!dumped.has(shape)) {
          dumped.add(shape);
          fs.writeFileSync(path.join(dump, shape + ".json"), JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString() }));
        }
      }
      res.writeHead(200, { "content-type": "application/json", "content-length": "2" });
      res.end("{}");
    });
  })
  .listen(port, "127.0.0.1", () => {
    process.stdout.write(`listening ${port}\n`);
  });

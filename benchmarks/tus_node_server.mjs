// The official tus Node server (@tus/server + @tus/file-store), as a benchmark target.
//
//   node benchmarks/tus_node_server.mjs PORT DATA_DIR
//
// Listens on 127.0.0.1:PORT; the creation URL is http://127.0.0.1:PORT/uploads/.
// @tus/server does no routing of its own (every request goes to the tus handler) and
// builds Location as `${path}/${id}`, so the option is '/uploads' (not '/uploads/', which
// would give '/uploads//<id>').
import http from "node:http";
import { FileStore } from "@tus/file-store";
import { Server } from "@tus/server";

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error("usage: node tus_node_server.mjs PORT DATA_DIR");
  process.exit(2);
}

const tus = new Server({ path: "/uploads", datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => tus.handle(req, res));
// Node 20 closes idle keep-alive sockets after 5 s by default; the load generator keeps
// its connections busy, so the default is kept as is.
server.listen(Number(port), "127.0.0.1", () => {
  console.log(`@tus/server listening on http://127.0.0.1:${port}/uploads/`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => server.close(() => process.exit(0)));
}

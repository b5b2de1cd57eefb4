// Run a Python script on real MicroPython (the WebAssembly port) under Node.
//
// usage: node run.mjs [--heap BYTES] [--async] [--romfs IMAGE] [--mount HOSTDIR:MPDIR]...
//                    SCRIPT.py [ARG...]
//
// --async runs the script with runPythonAsync, so it may `await` at top level; the port's
// asyncio is driven by the JavaScript event loop (it has no asyncio.run()), and the process
// ends when the awaited script finishes.
// --romfs hands the port a ROMFS image (built by `mpremote romfs build`): the port keeps it in
// memory outside MicroPython's heap, as an ESP32 maps its ROMFS flash partition, mounts it at
// /rom and puts /rom and /rom/lib on sys.path; .mpy files there run in place (their bytecode
// and constants are not copied into the heap).
// Every --mount copies a host directory tree into MicroPython's in-memory
// filesystem and prepends MPDIR to sys.path. ARGs are visible as sys.argv[1:].
// The script's stdout is written to our stdout unchanged; an uncaught Python
// exception makes the process exit with status 1.
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

function copyTree(FS, hostDir, mpDir) {
  FS.mkdirTree(mpDir);
  for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
    if (entry.name === "__pycache__") continue;
    const hostPath = path.join(hostDir, entry.name);
    const mpPath = mpDir + "/" + entry.name;
    if (entry.isDirectory()) copyTree(FS, hostPath, mpPath);
    else if (entry.isFile()) FS.writeFile(mpPath, fs.readFileSync(hostPath));
  }
}

const args = process.argv.slice(2);
const mounts = [];
let heapsize = 8 * 1024 * 1024;
let asyncMode = false;
let romfs;
let jsGcMs = 0;
while (args.length && args[0].startsWith("--")) {
  const flag = args.shift();
  if (flag === "--async") { asyncMode = true; continue; }
  const value = args.shift();
  if (value === undefined) { console.error(`${flag} needs a value`); process.exit(2); }
  if (flag === "--mount") mounts.push(value);
  else if (flag === "--heap") heapsize = Number(value);
  else if (flag === "--romfs") romfs = new Uint8Array(fs.readFileSync(value));
  else if (flag === "--js-gc-ms") jsGcMs = Number(value);
  else { console.error(`unknown option ${flag}`); process.exit(2); }
}
if (args.length < 1) {
  console.error("usage: run.mjs [--heap BYTES] [--async] [--romfs IMAGE] [--mount HOSTDIR:MPDIR]... " +
                "SCRIPT.py [ARG...]");
  process.exit(2);
}
const script = args.shift();

// --js-gc-ms runs JavaScript's collector that often (node needs --expose-gc). Why: every
// Python callable handed to JavaScript (asyncio's setTimeout callback, once per loop pass) is
// held in a table in MicroPython's heap until JavaScript's collector finalizes its proxy; on
// an idle Node that can take minutes, and the table then looks like a leak of the program's.
if (jsGcMs > 0) {
  if (typeof globalThis.gc !== "function") {
    console.error("--js-gc-ms needs node --expose-gc");
    process.exit(2);
  }
  setInterval(() => globalThis.gc(), jsGcMs).unref();
}
const mp = await loadMicroPython({
  heapsize,
  linebuffer: false,
  stdout: (bytes) => process.stdout.write(bytes),
  stderr: (bytes) => process.stderr.write(bytes),
  romfs,
});
const syspath = [];
for (const mount of mounts) {
  const split = mount.lastIndexOf(":");
  const hostDir = mount.slice(0, split);
  const mpDir = mount.slice(split + 1);
  copyTree(mp.FS, hostDir, mpDir);
  syspath.push(mpDir);
}
const argv = [script, ...args];
mp.runPython(
  "import sys\n" +
  `sys.path[:0] = ${JSON.stringify(syspath)}\n` +
  `sys.argv[:] = ${JSON.stringify(argv)}\n`
);
const code = fs.readFileSync(script, "utf8");
try {
  if (asyncMode) await mp.runPythonAsync(code);
  else mp.runPython(code);
} catch (err) {
  process.stderr.write(String(err && err.message ? err.message : err) + "\n");
  process.exitCode = 1;
}

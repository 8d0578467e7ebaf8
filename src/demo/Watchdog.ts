/**
 * Nothing of the demo may outlive it, even when it is killed outright (SIGKILL, a closed
 * terminal): a small Node process, started on first use, holds a pipe from the demo on its
 * stdin. When the pipe closes without the demo having cleaned up, it kills the processes, deletes
 * the network namespace and removes the folders that are still registered. Registrations are
 * withdrawn as the demo's own scope releases each thing, so a normal exit leaves it nothing to
 * do. (The apiservers have their own watchdog in `tether/testing`.)
 *
 * @since 0.1.0
 */
import * as ChildProcess from "node:child_process"
import type * as Net from "node:net"

export type Entry = { readonly pid: number } | { readonly dir: string } | { readonly netns: string }

// It ignores SIGINT and SIGHUP: Ctrl-C and a closed terminal reach the whole process group, and it
// must still be there when the demo dies of them.
const source = `
const fs = require("node:fs"), cp = require("node:child_process");
const live = new Map();
let buffer = "";
for (const s of ["SIGINT", "SIGHUP"]) process.on(s, () => {});
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffer += chunk;
  let i;
  while ((i = buffer.indexOf("\\n")) >= 0) {
    const m = JSON.parse(buffer.slice(0, i)); buffer = buffer.slice(i + 1);
    if (m.add) live.set(JSON.stringify(m.entry), m.entry); else live.delete(JSON.stringify(m.entry));
  }
});
const reap = () => {
  const entries = [...live.values()];
  for (const e of entries) if (e.pid !== undefined) { try { process.kill(e.pid, "SIGKILL"); } catch {} }
  setTimeout(() => {
    for (const e of entries) {
      if (e.netns !== undefined) {
        try { cp.execFileSync("ip", ["netns", "delete", e.netns], { stdio: "ignore" }); } catch {}
        try { fs.rmSync("/etc/netns/" + e.netns, { recursive: true, force: true }); } catch {}
      }
      if (e.dir !== undefined) { try { fs.rmSync(e.dir, { recursive: true, force: true }); } catch {} }
    }
    process.exit(0);
  }, entries.some((e) => e.pid !== undefined) ? 300 : 0);
};
process.stdin.on("end", reap);
process.stdin.on("error", reap);
`

let watchdog: ChildProcess.ChildProcess | undefined

const tell = (add: boolean, entry: Entry): void => {
  if (watchdog === undefined) {
    const child = ChildProcess.spawn(process.execPath, ["-e", source], {
      stdio: ["pipe", "ignore", "ignore"],
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" }
    })
    child.on("error", () => {})
    child.stdin?.on("error", () => {})
    // Neither the process nor its pipe may keep the demo alive.
    child.unref()
    ;(child.stdin as unknown as Net.Socket | null)?.unref()
    watchdog = child
  }
  if (watchdog.stdin?.writable === true) watchdog.stdin.write(`${JSON.stringify({ add, entry })}\n`)
}

/** Have `entry` removed should the demo die before it does so itself. */
export const register = (entry: Entry): void => tell(true, entry)

/** The demo removed `entry` itself. */
export const unregister = (entry: Entry): void => tell(false, entry)

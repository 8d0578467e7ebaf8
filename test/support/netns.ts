/**
 * A network namespace for the Relay path (root only; iproute2). A real kube-apiserver refuses to
 * proxy to loopback addresses, so what `services/proxy` reaches (the service relay and the
 * Services behind it) runs inside a namespace the test creates: a veth pair on a free /30 of
 * 10.203.0.0/16, the host side bound by the managed apiserver, the namespace side by the relay
 * and the backends. Names such as `hello.default.svc` resolve inside the namespace through
 * `/etc/netns/<ns>/hosts`, which `ip netns exec` mounts over `/etc/hosts`
 * (real-apiserver.md section 10). Everything (namespace, veth, /etc/netns files) is removed with
 * the scope, also after a failure.
 */
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"

const ip = (args: ReadonlyArray<string>) => ChildProcess.execFileSync("ip", [...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })

export interface Netns {
  readonly name: string
  /** The host-side veth address (the managed apiserver binds it). */
  readonly hostAddress: string
  /** The namespace-side address (relay and backends). */
  readonly nsAddress: string
  readonly hostLink: string
  readonly hostsFolder: string
  /** Whether /etc/netns did not exist before. */
  readonly madeEtcNetns: boolean
}

/** A /30 in 10.203.0.0/16 that no address of this machine's root namespace falls into. */
const freeSubnet = (): { readonly host: string; readonly ns: string } => {
  const used = ip(["-o", "-4", "addr", "show"])
  const routes = ip(["-4", "route", "show"])
  for (let attempt = 0; attempt < 100; attempt++) {
    const third = Crypto.randomInt(0, 256)
    const base = Crypto.randomInt(0, 64) * 4
    const prefix = `10.203.${third}.`
    const taken = [0, 1, 2, 3].some((offset) => used.includes(` ${prefix}${base + offset}/`))
    if (taken || routes.includes(`${prefix}${base}/30`)) continue
    return { host: `${prefix}${base + 1}`, ns: `${prefix}${base + 2}` }
  }
  throw new Error("no free /30 found in 10.203.0.0/16")
}

const removeNetns = (netns: Pick<Netns, "name" | "hostLink" | "hostsFolder" | "madeEtcNetns">) => {
  for (const args of [["netns", "delete", netns.name], ["link", "delete", netns.hostLink]]) {
    try {
      ip(args)
    } catch {
      // already gone (deleting the namespace removes the veth pair)
    }
  }
  Fs.rmSync(netns.hostsFolder, { recursive: true, force: true })
  // /etc/netns itself goes too when this test made it and nothing else is in it.
  if (netns.madeEtcNetns) {
    try {
      Fs.rmdirSync(Path.dirname(netns.hostsFolder))
    } catch {
      // not empty: another namespace uses it
    }
  }
}

/**
 * Create the namespace, the veth pair and `/etc/netns/<ns>/hosts` (its text from the namespace
 * address); removed with the scope.
 */
export const netnsResource = (hosts: (nsAddress: string) => string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const id = Crypto.randomBytes(3).toString("hex")
      const name = `tether-sp-${id}`
      const hostLink = `tsp${id}h`
      const nsLink = `tsp${id}n`
      const hostsFolder = Path.join("/etc/netns", name)
      const { host, ns } = freeSubnet()
      const madeEtcNetns = !Fs.existsSync("/etc/netns")
      try {
        ip(["netns", "add", name])
        ip(["link", "add", hostLink, "type", "veth", "peer", "name", nsLink])
        ip(["link", "set", nsLink, "netns", name])
        ip(["addr", "add", `${host}/30`, "dev", hostLink])
        ip(["link", "set", hostLink, "up"])
        ip(["netns", "exec", name, "ip", "addr", "add", `${ns}/30`, "dev", nsLink])
        ip(["netns", "exec", name, "ip", "link", "set", nsLink, "up"])
        ip(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
        Fs.mkdirSync(hostsFolder, { recursive: true })
        Fs.writeFileSync(Path.join(hostsFolder, "hosts"), hosts(ns))
      } catch (error) {
        removeNetns({ name, hostLink, hostsFolder, madeEtcNetns })
        throw error
      }
      return { name, hostAddress: host, nsAddress: ns, hostLink, hostsFolder, madeEtcNetns } satisfies Netns
    }),
    (netns) => Effect.sync(() => removeNetns(netns))
  )

/**
 * The argv that runs `argv` inside the namespace. `ip netns exec` execs it, so the PID of the
 * spawned process is the process itself and a signal reaches it directly.
 */
export const inNetns = (netns: Netns, argv: ReadonlyArray<string>): readonly [string, ReadonlyArray<string>] => [
  "ip",
  ["netns", "exec", netns.name, ...argv]
]

/** A Node process inside the namespace, its output in `logPath`; stopped (SIGTERM, then SIGKILL after 5 s) with the scope. */
export const spawnInNetns = (netns: Netns, label: string, args: ReadonlyArray<string>, logPath: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const fd = Fs.openSync(logPath, "w")
      const [file, argv] = inNetns(netns, [process.execPath, ...args])
      const child = ChildProcess.spawn(file, [...argv], {
        stdio: ["ignore", fd, fd],
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" },
        cwd: process.cwd()
      })
      Fs.closeSync(fd)
      child.on("error", () => {})
      return { label, child, logPath }
    }),
    ({ child }) =>
      Effect.callback<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        const kill = setTimeout(() => child.kill("SIGKILL"), 5_000)
        child.once("exit", () => {
          clearTimeout(kill)
          resume(Effect.void)
        })
        child.kill("SIGTERM")
      })
  )

/**
 * The demo's "managed cluster network": a network namespace with a veth pair. The managed
 * kube-apiserver binds the host side; the service relay and the backend Service run inside.
 * kube-apiserver refuses to proxy `services/proxy` to loopback endpoints, so the relay needs an
 * address of its own, which a namespace gives without touching the machine's real interfaces.
 *
 * Names carry the demo's PID (`tether-demo-<pid>`), so a later run can remove what a killed run
 * left behind without touching a namespace whose owner is still alive.
 *
 * @since 0.1.0
 */
import { Data, Effect, type Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Watchdog from "./Watchdog.ts"

export interface Netns {
  readonly name: string
  /** The host side of the veth pair: the managed apiserver binds it. */
  readonly hostAddress: string
  /** The namespace side: the service relay and the backend listen on it. */
  readonly nsAddress: string
  readonly hostLink: string
  /** `/etc/netns/<name>`: its `hosts` file is what `ip netns exec` shows as `/etc/hosts` inside. */
  readonly etcFolder: string
  readonly madeEtcNetns: boolean
}

/** Why the demo cannot create a namespace here (not root, no `ip`, no kernel support). */
export class NetnsUnavailable extends Data.TaggedError("NetnsUnavailable")<{ readonly message: string }> {}

const prefix = "tether-demo-"

const ip = (args: ReadonlyArray<string>): string =>
  ChildProcess.execFileSync("ip", [...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })

const quietly = (f: () => unknown): void => {
  try {
    f()
  } catch {
    // already gone
  }
}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** The link names for a namespace name: interface names have at most 15 characters. */
const links = (name: string) => {
  const id = name.slice(prefix.length).replace("-", "").slice(0, 11)
  return { host: `tdm${id}h`, ns: `tdm${id}n` }
}

const remove = (name: string, madeEtcNetns = false): void => {
  quietly(() => ip(["netns", "delete", name]))
  // Deleting the namespace removes the veth pair; this covers a half-made one.
  quietly(() => ip(["link", "delete", links(name).host]))
  Fs.rmSync(Path.join("/etc/netns", name), { recursive: true, force: true })
  // /etc/netns itself goes when this run made it and nothing else uses it.
  if (madeEtcNetns) quietly(() => Fs.rmdirSync("/etc/netns"))
}

/** The names of this machine's network namespaces. */
export const list = (): ReadonlyArray<string> => {
  try {
    return ip(["netns", "list"]).split("\n").map((line) => line.split(" ")[0] ?? "").filter((name) => name !== "")
  } catch {
    return []
  }
}

/** Remove namespaces of earlier demo runs whose process no longer exists; their names. */
export const removeStale = (): ReadonlyArray<string> =>
  list().filter((name) => {
    if (!name.startsWith(prefix)) return false
    const pid = Number(name.slice(prefix.length).split("-")[0])
    if (!Number.isSafeInteger(pid) || isAlive(pid)) return false
    remove(name)
    return true
  })

/** A /30 in 10.213.0.0/16 that no address or route of this machine overlaps. */
const freeSubnet = (): { readonly host: string; readonly ns: string } => {
  const used = ip(["-o", "-4", "addr", "show"]) + ip(["-4", "route", "show"])
  for (let attempt = 0; attempt < 100; attempt++) {
    const third = Crypto.randomInt(0, 256)
    const base = Crypto.randomInt(0, 64) * 4
    const net = `10.213.${third}.`
    if ([0, 1, 2, 3].some((offset) => used.includes(`${net}${base + offset}/`)) || used.includes(`${net}${base} `)) continue
    return { host: `${net}${base + 1}`, ns: `${net}${base + 2}` }
  }
  throw new Error("no free /30 in 10.213.0.0/16")
}

/**
 * Create the namespace with `hosts` entries for `names` (all resolving to the namespace's own
 * address, where the backend listens); removed with the scope, also when creation failed
 * half-way.
 */
export const make = (hostNames: ReadonlyArray<string>): Effect.Effect<Netns, NetnsUnavailable, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        if (process.getuid?.() !== 0) throw new Error("creating a network namespace needs root, and this process is not root")
        const name = `${prefix}${process.pid}-${Crypto.randomBytes(2).toString("hex")}`
        const link = links(name)
        const etcFolder = Path.join("/etc/netns", name)
        const madeEtcNetns = !Fs.existsSync("/etc/netns")
        try {
          const { host, ns } = freeSubnet()
          ip(["netns", "add", name])
          ip(["link", "add", link.host, "type", "veth", "peer", "name", link.ns])
          ip(["link", "set", link.ns, "netns", name])
          ip(["addr", "add", `${host}/30`, "dev", link.host])
          ip(["link", "set", link.host, "up"])
          ip(["netns", "exec", name, "ip", "addr", "add", `${ns}/30`, "dev", link.ns])
          ip(["netns", "exec", name, "ip", "link", "set", link.ns, "up"])
          ip(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
          Fs.mkdirSync(etcFolder, { recursive: true })
          Fs.writeFileSync(Path.join(etcFolder, "hosts"), ["127.0.0.1 localhost", ...hostNames.map((h) => `${ns} ${h}`), ""].join("\n"))
          Watchdog.register({ netns: name })
          return { name, hostAddress: host, nsAddress: ns, hostLink: link.host, etcFolder, madeEtcNetns } satisfies Netns
        } catch (error) {
          remove(name, madeEtcNetns)
          throw error
        }
      },
      catch: (error) => {
        const text = error instanceof Error ? error.message : String(error)
        const stderr = (error as { stderr?: unknown }).stderr
        return new NetnsUnavailable({ message: typeof stderr === "string" && stderr.trim() !== "" ? stderr.trim() : text })
      }
    }),
    (netns) =>
      Effect.sync(() => {
        remove(netns.name, netns.madeEtcNetns)
        Watchdog.unregister({ netns: netns.name })
      })
  )

/**
 * CPU accounting for the benchmark, from `/proc` (Linux only).
 *
 * Throughput and latency on a small shared machine move with whatever else runs on it; the CPU
 * time a relay spends per request or per gigabyte moves much less. So every measurement also
 * records the CPU time of the relay's processes (its whole process group: nginx workers and
 * socat's per-connection forks included, all threads), and before each measurement the machine
 * is given a bounded wait to become quiet.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"

const ticksPerSecond = (() => {
  const out = ChildProcess.spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" })
  const value = Number(out.stdout?.trim())
  return Number.isFinite(value) && value > 0 ? value : 100
})()

/**
 * CPU seconds used so far by every process in the given process groups, counting children
 * they have reaped (`cutime`/`cstime`).
 */
export const groupSeconds = (groups: ReadonlyArray<number>): number => {
  if (groups.length === 0) return 0
  const wanted = new Set(groups)
  let ticks = 0
  for (const entry of Fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = Fs.readFileSync(`/proc/${entry}/stat`, "utf8")
    } catch {
      continue // exited meanwhile
    }
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state(3) ppid(4) pgrp(5) ... utime(14) stime(15) cutime(16) cstime(17).
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    if (!wanted.has(Number(fields[2]))) continue
    ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])
  }
  return ticks / ticksPerSecond
}

const cpuTimes = (): { readonly idle: number; readonly total: number } => {
  const line = Fs.readFileSync("/proc/stat", "utf8").split("\n")[0] ?? ""
  const values = line.trim().split(/\s+/).slice(1).map(Number)
  const idle = (values[3] ?? 0) + (values[4] ?? 0)
  return { idle, total: values.reduce((a, b) => a + b, 0) }
}

/** Share of the machine's CPU that was busy during `millis`. */
export const busyShare = (millis: number) =>
  Effect.gen(function*() {
    const before = cpuTimes()
    yield* Effect.sleep(millis)
    const after = cpuTimes()
    const total = after.total - before.total
    return total <= 0 ? 0 : 1 - (after.idle - before.idle) / total
  })

/**
 * Wait until the machine is quiet (busy below `threshold` over half a second), at most
 * `maxWaitMillis`. Returns the last busy share seen: above the threshold means the measurement
 * that follows ran on a busy machine.
 */
export const awaitQuiet = (threshold: number, maxWaitMillis: number) =>
  Effect.gen(function*() {
    let waited = 0
    while (true) {
      const busy = yield* busyShare(500)
      waited += 500
      if (busy < threshold || waited >= maxWaitMillis) return busy
    }
  })

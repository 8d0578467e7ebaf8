/**
 * The demo's client side: single HTTP(S) requests read to the end, and shell commands (the very
 * commands it prints for the user to paste), each bounded in time. Neither fails: the outcome
 * says how it went, so a failed request is counted, not fatal.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Http from "node:http"
import * as Https from "node:https"

export interface Reply {
  /** 0 when no response arrived (`error` says why). */
  readonly status: number
  readonly body: string
  readonly error?: string
}

export interface RequestOptions {
  readonly url: string
  readonly headers?: Http.OutgoingHttpHeaders
  /** CAs trusted for https URLs. */
  readonly ca?: ReadonlyArray<string>
  readonly timeoutMs?: number
}

/** One request on a fresh connection. */
export const request = (options: RequestOptions): Effect.Effect<Reply> =>
  Effect.callback<Reply>((resume) => {
    const url = new URL(options.url)
    const common = { headers: options.headers ?? {}, agent: false as const, timeout: options.timeoutMs ?? 10_000 }
    const onResponse = (res: Http.IncomingMessage) => {
      const chunks: Array<Buffer> = []
      res.on("data", (chunk: Buffer) => chunks.push(chunk))
      res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() })))
      res.on("error", (error) => resume(Effect.succeed({ status: 0, body: "", error: error.message })))
    }
    const req = url.protocol === "https:"
      ? Https.request(url, { ...common, ...(options.ca === undefined ? {} : { ca: [...options.ca] }) }, onResponse)
      : Http.request(url, common, onResponse)
    req.on("timeout", () => req.destroy(new Error(`no answer within ${common.timeout} ms`)))
    req.on("error", (error) => resume(Effect.succeed({ status: 0, body: "", error: error.message })))
    req.end()
    return Effect.sync(() => req.destroy())
  })

export interface Run {
  /** The exit code; -1 when it could not run or timed out. */
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Run `command` with bash, as a user would after pasting it. */
export const shell = (command: string, timeoutMs = 60_000): Effect.Effect<Run> =>
  Effect.callback<Run>((resume) => {
    const child = ChildProcess.execFile("bash", ["-c", command], { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1
      resume(Effect.succeed({ code, stdout, stderr }))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** Whether `tool` is on PATH. */
export const has = (tool: string): boolean => ChildProcess.spawnSync("bash", ["-c", `command -v ${tool}`], { stdio: "ignore" }).status === 0

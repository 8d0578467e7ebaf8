/**
 * One HTTP or HTTPS request to a server on loopback, read to the end: what the relay and proxy
 * suites send their servers. A transport failure or a timeout fails the test (a defect).
 */
import { Effect } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"

export interface Reply {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: string
  readonly trailers: NodeJS.Dict<string>
}

export interface SendOptions {
  readonly path?: string
  readonly method?: string
  readonly headers?: Http.OutgoingHttpHeaders
  readonly body?: string
  /** HTTPS, trusting these CAs; plain HTTP when absent. */
  readonly ca?: ReadonlyArray<string>
  /** Default: a fresh connection. */
  readonly agent?: Http.Agent | false
}

export const send = (port: number, options: SendOptions = {}): Effect.Effect<Reply> =>
  Effect.callback<Reply>((resume) => {
    const common = {
      host: "127.0.0.1",
      port,
      path: options.path ?? "/",
      method: options.method ?? "GET",
      headers: options.headers ?? {},
      agent: options.agent ?? false,
      timeout: 20_000
    }
    const onResponse = (res: Http.IncomingMessage) => {
      const chunks: Array<Buffer> = []
      res.on("data", (chunk: Buffer) => chunks.push(chunk))
      res.on("end", () =>
        resume(Effect.succeed({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
          trailers: res.trailers
        })))
      res.on("error", (error) => resume(Effect.die(error)))
    }
    const req = options.ca === undefined
      ? Http.request(common, onResponse)
      : Https.request({ ...common, ca: [...options.ca] }, onResponse)
    req.on("timeout", () => req.destroy(new Error("request timed out")))
    req.on("error", (error) => resume(Effect.die(error)))
    req.end(options.body)
    return Effect.sync(() => req.destroy())
  })

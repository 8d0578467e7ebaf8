/**
 * Trust for https Services: the system roots, and CA files an operator mounts.
 *
 * @since 0.1.0
 */
import { Effect, Schema } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Tls from "node:tls"

/**
 * A CA file that exists but is not PEM certificates (trusting less than asked would fail every
 * https call later).
 *
 * @category errors
 */
export class ServiceCaError extends Schema.TaggedError<ServiceCaError>()("ServiceCaError", { message: Schema.String }) {}

const pemBlock = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g

/**
 * The certificates of a PEM file. Missing file (or none given): logged, none. Unreadable or not
 * PEM certificates: an error.
 *
 * @category constructors
 */
export const loadServiceCa = Effect.fn("Trust.loadServiceCa")(function*(path: string | undefined) {
  if (path === undefined || path === "") return [] as ReadonlyArray<string>
  const fail = (why: string) => new ServiceCaError({ message: `additional service CA ${path}: ${why}` })
  const text = yield* Effect.try({
    try: () => (Fs.existsSync(path) ? Fs.readFileSync(path, "utf8") : undefined),
    catch: (error) => fail(error instanceof Error ? error.message : String(error))
  })
  if (text === undefined) {
    yield* Effect.logWarning("additional service CA file not found; trusting the system roots only", { path })
    return [] as ReadonlyArray<string>
  }
  const blocks = text.match(pemBlock) ?? []
  if (blocks.length === 0) return yield* fail("no PEM certificate found")
  for (const [index, block] of blocks.entries()) {
    yield* Effect.try({
      try: () => new Crypto.X509Certificate(block),
      catch: () => fail(`certificate ${index + 1} does not parse`)
    })
  }
  return blocks as ReadonlyArray<string>
})

/**
 * Node's bundled roots and the system store's (when readable).
 *
 * @category constructors
 */
export const systemRoots = (): ReadonlyArray<string> => {
  const all = new Set(Tls.getCACertificates("default"))
  try {
    for (const cert of Tls.getCACertificates("system")) all.add(cert)
  } catch {
    // No readable system store (e.g. a distroless image): the bundled roots remain.
  }
  return [...all]
}

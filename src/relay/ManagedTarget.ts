/**
 * Where the managed-apiserver relay dials: the `server` of the current context's cluster in the
 * managed kubeconfig, as a TCP endpoint. Pure (the watcher does the reading).
 *
 * Only the cluster's `server` is read; users and credentials are not looked at, so a kubeconfig
 * whose user the relay could not use itself (a token file, exec) still gives a target. Error
 * messages name kubeconfig fields and entries, never values: the same file holds a token.
 *
 * @since 0.1.0
 */
import * as Yaml from "js-yaml"
import { Result, Schema } from "effect"
import * as ServerEndpoint from "../domain/ServerEndpoint.ts"

/**
 * The kubeconfig names no usable TCP target. Kept until the file changes.
 *
 * @since 0.1.0
 * @category errors
 */
export class TargetError extends Schema.TaggedError<TargetError>()("TargetError", {
  message: Schema.String
}) {}

/** @since 0.1.0 @category models */
export type Target = ServerEndpoint.ServerEndpoint

type Mapping = Readonly<Record<string, unknown>>

const isMapping = (u: unknown): u is Mapping => typeof u === "object" && u !== null && !Array.isArray(u)

const fail = (why: string) => Result.fail(new TargetError({ message: `managed kubeconfig: ${why}` }))

const q = (name: string): string => JSON.stringify(name)

/** Parses YAML; the failure keeps only the position, since js-yaml quotes the offending text. */
const parseYaml = (text: string): Result.Result<unknown, TargetError> => {
  if (text.trim() === "") return fail("the file is empty")
  try {
    return Result.succeed(Yaml.load(text))
  } catch (error) {
    const mark = (error as { readonly mark?: { readonly line?: unknown } }).mark
    return fail(typeof mark?.line === "number" ? `not valid YAML (line ${mark.line + 1})` : "not valid YAML")
  }
}

/** The body of the entry called `name` in a kubeconfig list (`clusters`, `contexts`). */
const entryBody = (list: unknown, name: string, bodyKey: string): Mapping | undefined => {
  if (!Array.isArray(list)) return undefined
  const entry = list.find((item): item is Mapping => isMapping(item) && item["name"] === name)
  const body = entry?.[bodyKey]
  return isMapping(body) ? body : undefined
}

/**
 * The selected cluster's `server` URL: the current context's cluster, or without a current
 * context the only cluster (client-go's choice).
 *
 * @since 0.1.0
 * @category parsing
 */
export const serverOf = (kubeconfig: string): Result.Result<string, TargetError> =>
  Result.gen(function*() {
    const root = yield* parseYaml(kubeconfig)
    if (!isMapping(root)) return yield* fail("the document is not a mapping")
    const clusters = root["clusters"]
    const current = root["current-context"]
    let clusterName: string
    if (typeof current === "string" && current !== "") {
      const context = entryBody(root["contexts"], current, "context")
      if (context === undefined) return yield* fail(`current context ${q(current)} is not defined in contexts`)
      const name = context["cluster"]
      if (typeof name !== "string" || name === "") return yield* fail(`context ${q(current)} names no cluster`)
      clusterName = name
    } else {
      const only = Array.isArray(clusters) && clusters.length === 1 && isMapping(clusters[0]) ? clusters[0]["name"] : undefined
      if (typeof only !== "string") return yield* fail("no current context and not exactly one cluster")
      clusterName = only
    }
    const cluster = entryBody(clusters, clusterName, "cluster")
    if (cluster === undefined) return yield* fail(`cluster ${q(clusterName)} is not defined in clusters`)
    const server = cluster["server"]
    if (typeof server !== "string" || server.trim() === "") return yield* fail(`cluster ${q(clusterName)} has no server`)
    return server.trim()
  })

/**
 * The TCP endpoint the relay dials, from the kubeconfig text. Schemes other than `https` and
 * `http` are refused: the relay forwards bytes, so anything else has no meaning for it.
 *
 * @since 0.1.0
 * @category parsing
 */
export const fromKubeconfig = (kubeconfig: string): Result.Result<Target, TargetError> =>
  Result.flatMap(serverOf(kubeconfig), (server) =>
    Result.mapError(ServerEndpoint.fromServerUrl(server), (error) =>
      new TargetError({ message: `managed kubeconfig: ${error.message}` })))

/**
 * Same destination (scheme aside: the relay only dials host and port).
 *
 * @since 0.1.0
 * @category predicates
 */
export const equals = (a: Target, b: Target): boolean => a.host === b.host && a.port === b.port

/**
 * `host:port`, IPv6 bracketed, for logs.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (target: Target): string => ServerEndpoint.hostPort(target)

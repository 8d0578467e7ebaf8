/**
 * Turning a Service host name (`hello.default.svc`) into an address to connect to.
 *
 * The relay connects to the address but keeps the host name for everything else (the `Host`
 * header, TLS SNI and certificate verification), so swapping the resolver changes where bytes
 * go and nothing about what is checked. In a pod, {@link ServiceResolver.layerSystem} uses the
 * system resolver (cluster DNS through the pod's search path, as the Go relay did); tests use
 * {@link ServiceResolver.layerStatic} and need no cluster DNS.
 *
 * @since 0.1.0
 */
import { Clock, Context, Duration, Effect, Layer, Schema } from "effect"
import * as Dns from "node:dns"
import * as Net from "node:net"

/** @category models */
export interface Resolved {
  readonly address: string
  readonly family: 4 | 6
}

/**
 * The name does not resolve (or resolution failed). The relay answers 502.
 *
 * @category errors
 */
export class ResolveError extends Schema.TaggedError<ResolveError>()("ResolveError", {
  hostname: Schema.String,
  message: Schema.String
}) {}

/** @category services */
export class ServiceResolver extends Context.Service<ServiceResolver, {
  readonly resolve: (hostname: string) => Effect.Effect<Resolved, ResolveError>
  /** The address when it is at hand without a lookup (cached); undefined otherwise. */
  readonly known: (hostname: string) => Resolved | undefined
}>()("tether/relay/ServiceResolver") {
  /**
   * The operating system's resolver (`getaddrinfo`, honouring the pod's DNS search path), with
   * answers reused for a few seconds: with Kubernetes' `ndots:5` one lookup can be several DNS
   * queries, which should not happen on every request. Lookups time out after 5 seconds.
   */
  static readonly layerSystem = Layer.effect(ServiceResolver, Effect.gen(function*() {
    const clock = yield* Clock.clockWith(Effect.succeed)
    const cache = new Map<string, { readonly resolved: Resolved; readonly until: number }>()
    const maxEntries = 1024
    const ttl = Duration.seconds(5)
    const lookup = (hostname: string) =>
      Effect.tryPromise({
        try: () => Dns.promises.lookup(hostname, { verbatim: true }),
        catch: (error) =>
          new ResolveError({
            hostname,
            message: `cannot resolve ${hostname}: ${(error as { code?: unknown }).code ?? String(error)}`
          })
      }).pipe(
        Effect.timeoutOrElse({
          duration: Duration.seconds(5),
          orElse: () => Effect.fail(new ResolveError({ hostname, message: `resolving ${hostname} timed out` }))
        }),
        Effect.map(({ address, family }): Resolved => ({ address, family: family === 6 ? 6 : 4 }))
      )
    const cached = (hostname: string, now: number) => {
      const hit = cache.get(hostname)
      return hit !== undefined && hit.until > now ? hit.resolved : undefined
    }
    return ServiceResolver.of({
      resolve: (hostname) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const hit = cached(hostname, now)
          if (hit !== undefined) return Effect.succeed(hit)
          return Effect.tap(lookup(hostname), (resolved) =>
            Effect.sync(() => {
              if (cache.size >= maxEntries) cache.delete(cache.keys().next().value as string)
              cache.set(hostname, { resolved, until: now + Duration.toMillis(ttl) })
            }))
        }),
      known: (hostname) => cached(hostname, clock.currentTimeMillisUnsafe())
    })
  }))

  /**
   * A fixed table from host name (case-insensitive) to IP address; other names do not resolve.
   */
  static readonly layerStatic = (addresses: Readonly<Record<string, string>>) => {
    const table = new Map<string, Resolved>()
    for (const [name, address] of Object.entries(addresses)) {
      const family = Net.isIP(address)
      if (family === 4 || family === 6) table.set(name.toLowerCase(), { address, family })
    }
    const known = (hostname: string) => table.get(hostname.toLowerCase())
    return Layer.succeed(ServiceResolver, ServiceResolver.of({
      resolve: (hostname) => {
        const resolved = known(hostname)
        return resolved !== undefined
          ? Effect.succeed(resolved)
          : Effect.fail(new ResolveError({ hostname, message: `cannot resolve ${hostname}: not in the static table` }))
      },
      known
    }))
  }
}

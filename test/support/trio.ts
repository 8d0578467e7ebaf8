/**
 * The three clusters of hosted mode as real apiservers: `hub` (with the ManagedClusterAddOn CRD),
 * `hosting` and `managed`. {@link makeTrio} starts them in the caller's scope (for one test),
 * {@link useTrio} once for a describe block. With `auditLog` each writes an audit log, so a suite
 * can count the requests tether sends from the servers' own record.
 */
import { afterAll, beforeAll } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"

export interface Trio {
  readonly hub: Apiserver.ApiserverInfo
  readonly hosting: Apiserver.ApiserverInfo
  readonly managed: Apiserver.ApiserverInfo
}

export interface TrioOptions {
  /** Appended to each name (`hub-<suffix>` ...), to tell several trios' files and logs apart. */
  readonly suffix?: string
  /** Every apiserver writes an audit log ({@link Apiserver.auditEvents}). */
  readonly auditLog?: boolean
}

/** The three apiservers, started together; stopped with the scope. */
export const makeTrio = (options: TrioOptions = {}): Effect.Effect<Trio, Apiserver.ApiserverError, Scope.Scope> => {
  const name = (cluster: string) => (options.suffix === undefined ? cluster : `${cluster}-${options.suffix}`)
  const auditLog = options.auditLog === true ? { auditLog: true } : {}
  return Effect.all([
    Apiserver.make({ name: name("hub"), crds: [Fixtures.managedClusterAddOnCrd], ...auditLog }),
    Apiserver.make({ name: name("hosting"), ...auditLog }),
    Apiserver.make({ name: name("managed"), ...auditLog })
  ], { concurrency: "unbounded" }).pipe(Effect.map(([hub, hosting, managed]) => ({ hub, hosting, managed })))
}

/** {@link makeTrio} once for the describe block it is called in (before its tests, stopped after them). */
export const useTrio = (options: TrioOptions = {}): Trio => {
  let scope: Scope.Closeable | undefined
  let started: Trio | undefined
  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make("parallel"))
    started = await Effect.runPromise(makeTrio(options).pipe(Scope.provide(scope)))
  })
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })
  const get = (name: keyof Trio) => {
    if (started === undefined) throw new Error("the apiservers are not started (useTrio must be called inside describe)")
    return started[name]
  }
  return {
    get hub() {
      return get("hub")
    },
    get hosting() {
      return get("hosting")
    },
    get managed() {
      return get("managed")
    }
  }
}

/**
 * The three clusters of hosted mode as real apiservers, started once for a describe block:
 * `hub` (with the ManagedClusterAddOn CRD), `hosting` and `managed`. Call inside `describe`.
 */
import { afterAll, beforeAll } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"

export interface Trio {
  readonly hub: Apiserver.ApiserverInfo
  readonly hosting: Apiserver.ApiserverInfo
  readonly managed: Apiserver.ApiserverInfo
}

export const useTrio = (): Trio => {
  let scope: Scope.Closeable | undefined
  let started: Trio | undefined
  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make("parallel"))
    const [hub, hosting, managed] = await Effect.runPromise(
      Effect.all([
        Apiserver.make({ name: "hub", crds: [Fixtures.managedClusterAddOnCrd] }),
        Apiserver.make({ name: "hosting" }),
        Apiserver.make({ name: "managed" })
      ], { concurrency: "unbounded" }).pipe(Scope.provide(scope))
    )
    started = { hub, hosting, managed }
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

/**
 * `npm run envtest`: makes sure the kube-apiserver and etcd binaries for the integration tests exist
 * (building them into the per-machine cache when nothing is configured) and prints where they are.
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect } from "effect"
import * as EnvtestAssets from "../EnvtestAssets.ts"

const main = Effect.gen(function*() {
  const paths = yield* EnvtestAssets.ensure
  const versions = yield* EnvtestAssets.versions(paths)
  yield* Console.log(`source:         ${paths.source}`)
  yield* Console.log(`kube-apiserver: ${paths.kubeApiserver} (${versions.kubeApiserver})`)
  yield* Console.log(`etcd:           ${paths.etcd} (${versions.etcd})`)
}).pipe(
  // The typed error already says what to do; print just that instead of a stack trace.
  Effect.tapError((error) => Console.error(error.message)),
  Effect.tapDefect((defect) => Console.error(defect)),
  Effect.withSpan("envtest.cli")
)

NodeRuntime.runMain(main, { disableErrorReporting: true })

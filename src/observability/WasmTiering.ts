/**
 * Keeps WebAssembly on V8's baseline compiler (Liftoff), without tier-up to TurboFan.
 *
 * undici parses HTTP/1.1 with llhttp compiled to WebAssembly: the Kubernetes client, the HTTP
 * forwarders, and Node's `fetch` (the add-on agent's health check), which has its own copy.
 * Within the first few responses V8 recompiles llhttp's state machine, one 33 KB function, with
 * TurboFan on a worker thread: about 23 MiB of compiler memory at its peak, freed at once, of
 * which glibc keeps 9-10 MiB resident (its arenas return only what lies at their top). That
 * was most of what switching the Kubernetes client to HTTP/1.1 added to every agent's idle
 * resident set (addon-agent 86-87 against 72 MiB idle, hosted-agent 94-95 against 84-85;
 * `npm run bench -- --only=footprint`, README, Footprint). Liftoff's code parses a 1.4 KB
 * response in 0.8-1.0 us instead of 0.33 us: half a microsecond per proxied request, where a
 * request costs the service proxy 100-150 us.
 *
 * V8 reads these flags whenever a function would tier up, so they stay set for good. They also
 * enter the flag hash that V8 checks a code cache against: set them once the process's modules
 * are loaded (`dist/compile-cache` is written without them), before the first HTTP/1.1 answer.
 *
 * @since 0.1.0
 */
import * as V8 from "node:v8"

/**
 * Keep every WebAssembly function on Liftoff from now on. Both flags are needed: either alone
 * still tiers llhttp up.
 *
 * @since 0.1.0
 * @category runtime
 */
export const keepOnBaseline = (): void => {
  V8.setFlagsFromString("--no-wasm-dynamic-tiering")
  V8.setFlagsFromString("--no-wasm-tier-up")
}

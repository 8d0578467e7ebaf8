/**
 * The demo's terminal: timestamped event lines that scroll, and below them a status block that is
 * redrawn in place on a TTY. When stdout is not a TTY (CI, a pipe) the block is printed as plain
 * `status` lines instead, at most every `plainEvery` and whenever the demo asks for it, so logs
 * stay readable and parseable.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as Status from "./Status.ts"

export interface Screen {
  readonly tty: boolean
  /** A timestamped line above the status block. */
  readonly event: (line: string) => Effect.Effect<void>
  /** Lines printed as they are (command listings). */
  readonly text: (lines: ReadonlyArray<string>) => Effect.Effect<void>
  /** The new status block; in plain mode printed when `force` or when `plainEvery` has passed. */
  readonly status: (lines: ReadonlyArray<string>, force?: boolean) => Effect.Effect<void>
  /** Leave the status block where it is (before the demo's last lines). */
  readonly release: Effect.Effect<void>
}

export const make = (out: NodeJS.WriteStream = process.stdout, plainEvery = 15_000): Screen => {
  const tty = out.isTTY === true && process.env["TERM"] !== "dumb"
  let block: ReadonlyArray<string> = []
  let shown = 0
  let lastPlain = 0
  const indent = " ".repeat(13)

  const width = () => Math.max(40, (out.columns ?? 120) - 1)
  // A status line longer than the terminal continues on indented lines, broken at " · " where it
  // can be: the block must know how many rows it takes to redraw itself in place.
  const wrap = (line: string): ReadonlyArray<string> => {
    const rows: Array<string> = []
    let rest = line
    while (rest.length > width()) {
      let cut = rest.lastIndexOf(" · ", width())
      if (cut <= indent.length) cut = rest.lastIndexOf(" ", width())
      if (cut <= indent.length) cut = width()
      rows.push(rest.slice(0, cut))
      rest = indent + rest.slice(cut).replace(/^( · | )/, "")
    }
    return [...rows, rest]
  }
  // Cursor up over the block, clear to the end of the screen.
  const erase = () => {
    if (shown > 0) out.write(`\x1b[${shown}A\x1b[0J`)
    shown = 0
  }
  const draw = () => {
    if (block.length === 0) return
    const rule = `── status ${Status.clock(Date.now())} ${"─".repeat(40)}`.slice(0, width())
    const rows = block.flatMap(wrap)
    out.write(`\x1b[2m${rule}\x1b[0m\n${rows.join("\n")}\n`)
    shown = rows.length + 1
  }
  const print = (lines: ReadonlyArray<string>) => {
    if (tty) erase()
    out.write(lines.map((line) => `${line}\n`).join(""))
    if (tty) draw()
  }

  return {
    tty,
    event: (line) => Effect.sync(() => print([`${Status.clock(Date.now())}  ${line}`])),
    text: (lines) => Effect.sync(() => print(lines)),
    status: (lines, force = false) =>
      Effect.sync(() => {
        block = lines
        if (tty) {
          erase()
          draw()
          return
        }
        const now = Date.now()
        if (!force && now - lastPlain < plainEvery) return
        lastPlain = now
        out.write(lines.map((line) => `${Status.clock(now)}  status  ${line}\n`).join(""))
      }),
    release: Effect.sync(() => {
      shown = 0
      block = []
    })
  }
}

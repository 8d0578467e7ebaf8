/**
 * How long to keep polling after an event, adapted to how close together events come: the
 * policy of {@link BusyPoll}, pure (the caller measures the gaps).
 *
 * Polling pays when the next event comes within the window, and is wasted CPU when it does not.
 * So the window grows (doubling from an eighth of the maximum) after each gap that polling for
 * the maximum would have caught, and halves after each gap that it would not have, down to no
 * polling at all. As KVM adapts its halt-polling window: a steady stream of requests on few
 * connections (where a wake-up from idle is most of the latency) is polled for the maximum
 * within four events; requests that come now and then, a few milliseconds apart or more, are not
 * polled for after four of them; one outlier costs half the window, not all of it.
 *
 * @since 0.1.0
 */

/**
 * The window after an event that came `gapMicros` after the one before, where `window` was the
 * window then; all in microseconds, within `[0, maxMicros]`.
 *
 * @category policy
 */
export const next = (window: number, gapMicros: number, maxMicros: number): number => {
  if (!(maxMicros > 0)) return 0
  const smallest = maxMicros / 8
  if (gapMicros <= maxMicros) return window < smallest ? smallest : Math.min(maxMicros, window * 2)
  const halved = window / 2
  return halved < smallest ? 0 : halved
}

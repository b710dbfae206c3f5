"""A simulated model served by cy_worker: `python -m cy_worker.sim --help`.

Used by the sidecar's demo, end-to-end tests and benchmarks. It streams
English-looking words at a set pace, deterministically: the same prompt and
seed always give the same text, and each word piece has a stable token id
(its index in the built-in vocabulary). It bills one prompt token per
whitespace-separated word of the prompt (of all chat message contents, for
chat requests), at least 1, directives excluded.

Output length: `--tokens` (or a directive's `tokens=`), capped by the
request's `sampling.max_tokens` when that is not 0. A capped generation ends
with finish reason `length`, any other with `stop`.

Per-request directive
---------------------
A prompt (or any chat message) may contain one directive that overrides the
command-line defaults for that request::

    directive = "[[sim" { WS key "=" value } [ WS ] "]]"
    WS        = one or more whitespace characters
    value     = characters other than whitespace, "[" and "]"

    tokens=N      output length (integer >= 0)           --tokens
    ttft_ms=X     time to first token, ms (number >= 0)  --ttft-ms
    itl_ms=X      time between tokens, ms (number >= 0)  --itl-ms
    fault=KIND    inject a fault (below), or "none"      --fault
    after=N       tokens sent before the fault fires     --fault-after-tokens
    code=CODE     error code for fault=error             --fault-code
    schedule=S    own or batched (below)                 --schedule

For example `tell me a story [[sim tokens=5 fault=exit after=3 itl_ms=0]]`.
The first directive applies; directives are removed from the text before
it is counted or used as a seed. A malformed directive (unknown key, bad
value) fails the generation with error code `invalid_argument`.

Schedules
---------
`own` (the default): each generation keeps its own clock, the first token
`ttft_ms` after the request and then one every `itl_ms`. `batched`: tokens
fall on one grid of steps `itl_ms` apart, shared by every generation with
the same `itl_ms`, as a continuously batching engine emits one token for
every running sequence per decode step; the first token waits for the first
step boundary after `ttft_ms`.

Faults
------
A fault fires when the generation is asked for token `after` + 1 (or at
the end of a shorter generation), so it needs credit at that point;
`lie_usage` and `slow_cancel` hold throughout instead:

    exit         the process exits at once with status 3
    hang         the generation sends nothing more (pings are still
                 answered; a cancel still ends it)
    error        the generation ends with an error frame, code `code`
    malformed    writes a frame whose payload is not valid JSON
    oversized    writes a frame header announcing max_frame_bytes + 1 bytes
                 (the sidecar's limit), then sends nothing more for it
    no_credit    sends the remaining chunks without waiting for credit
    lie_usage    `done` reports 5 more completion tokens than were sent
    unknown_id   writes a chunk for an id that was never started
    slow_cancel  a cancelled generation ends 1 s after the cancel

Signals
-------
SIGUSR1 reloads: announce `reloading` (eta `--reload-eta-secs`), wait for
in-flight generations, then either wait `--reload-secs` and announce `ready`
with the next model id (sim-1, sim-2, ...; `--reload-mode inprocess`), or
exit with status 0 for a supervisor to restart (`--reload-mode exit`).
SIGTERM and SIGINT drain: announce `draining`, wait for in-flight
generations (up to `--drain-timeout-secs`; a second signal stops waiting),
exit 0.
"""

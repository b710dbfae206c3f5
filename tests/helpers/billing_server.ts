/**
 * A real HTTP billing service for metering tests. Its behaviour can be
 * switched while it runs: healthy, failing with 500, hanging (so requests
 * time out), accepting records but dropping the answer (a lost
 * acknowledgement), refusing records that carry a poison label, or down
 * (not listening at all).
 */

/** How the server answers a batch. */
export type BillingMode = "ok" | "fail500" | "hang" | "lose_ack" | "down";

interface StoredRecord {
  id: string;
  request_id: string;
  prompt_tokens: number;
  completion_tokens: number;
  finish_reason: string;
  billing_labels: Record<string, string>;
  [k: string]: unknown;
}

/** A billing service on 127.0.0.1. */
export class BillingServer {
  mode: BillingMode = "ok";
  /** Every record received, duplicates included, in order. */
  readonly received: StoredRecord[] = [];
  /** Content types of the requests. */
  readonly contentTypes: string[] = [];
  /** Raw bodies (for format checks). */
  readonly bodies: unknown[] = [];
  #server: Deno.HttpServer | null = null;
  #port = 0;
  #hung: (() => void)[] = [];

  /** The endpoint URL. */
  get url(): string {
    return `http://127.0.0.1:${this.#port}/v1/usage`;
  }

  /** Starts listening (on the same port as before, after a restart). */
  start(): void {
    this.#server = Deno.serve(
      {
        hostname: "127.0.0.1",
        port: this.#port,
        onListen: (a) => (this.#port = a.port),
      },
      (req) => this.#handle(req),
    );
  }

  /** Stops listening, so connections are refused. */
  async stopListening(): Promise<void> {
    for (const h of this.#hung.splice(0)) h();
    await this.#server?.shutdown();
    this.#server = null;
  }

  async #handle(req: Request): Promise<Response> {
    const body = await req.json();
    const mode = this.mode;
    if (mode === "fail500") {
      return new Response("billing is down for maintenance", { status: 500 });
    }
    if (mode === "hang") {
      await new Promise<void>((r) => this.#hung.push(r));
      return new Response("too late", { status: 503 });
    }
    const records: StoredRecord[] = Array.isArray(body)
      ? body.map((e: { data: StoredRecord }) => e.data)
      : body.records;
    if (records.some((r) => r.billing_labels?.poison === "1")) {
      return new Response("record refused: unknown customer", { status: 400 });
    }
    this.contentTypes.push(req.headers.get("content-type") ?? "");
    this.bodies.push(body);
    this.received.push(...records);
    if (mode === "lose_ack") {
      // Stored, but the sidecar never learns it: it must send them again.
      await new Promise<void>((r) => this.#hung.push(r));
      return new Response("lost", { status: 503 });
    }
    return Response.json({ accepted: records.length });
  }

  /** Records deduplicated by id (what a billing backend would keep). */
  unique(): StoredRecord[] {
    const byId = new Map<string, StoredRecord>();
    for (const r of this.received) byId.set(r.id, r);
    return [...byId.values()];
  }

  /** Waits until `pred` holds for the unique records. */
  async waitFor(
    pred: (unique: StoredRecord[]) => boolean,
    timeoutMs = 20_000,
  ): Promise<StoredRecord[]> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const u = this.unique();
      if (pred(u)) return u;
      if (Date.now() > until) {
        throw new Error(
          `billing condition not met; ${u.length} unique records: ${
            JSON.stringify(u.map((r) => r.request_id))
          }`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async close(): Promise<void> {
    await this.stopListening();
  }
}

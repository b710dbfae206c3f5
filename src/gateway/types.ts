/**
 * Plain-object shapes of the gateway API messages, as the proto loader
 * decodes them and as handlers write them (see proto/cy/sidecar/v1).
 *
 * @module
 */

export interface ChatMessagePb {
  role: string;
  content: string;
}

export interface SamplingParamsPb {
  max_tokens: number;
  temperature?: number;
  top_p?: number;
  stop: string[];
  seed?: string;
}

export interface GenerateRequestPb {
  request_id: string;
  session_id: string;
  model_id: string;
  prompt: string;
  messages: ChatMessagePb[];
  sampling: SamplingParamsPb | null;
  billing_labels: Record<string, string>;
  timeout_ms: number;
}

export interface SessionRequestPb {
  generate?: GenerateRequestPb | null;
  cancel?: { request_id: string } | null;
  kind?: "generate" | "cancel";
}

export interface UsagePb {
  prompt_tokens: number;
  completion_tokens: number;
}

/** One event on a Generate or Session stream. */
export type GenerateEventPb =
  | { request_id: string; chunk: { text: string; token_ids: number[] } }
  | {
    request_id: string;
    system: { kind: "RELOADING" | "RESUMED"; text: string; eta_ms: number };
  }
  | {
    request_id: string;
    done: { finish_reason: string; usage: UsagePb; model_id: string };
  }
  | {
    request_id: string;
    error: {
      code: number;
      message: string;
      retry_after_ms: number;
      usage: UsagePb;
    };
  };

export interface WorkerStatusPb {
  state: "CONNECTED" | "DISCONNECTED" | "RELOADING" | "DRAINING";
  model_id: string;
  protocol_version: number;
  in_flight: number;
  max_concurrency: number;
  eta_ms: number;
  detail: string;
  sidecar_version: string;
}

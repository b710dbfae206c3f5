/**
 * Request bodies for the billing endpoint (docs/metering.md).
 *
 * @module
 */

import type { UsageFormat } from "../config/mod.ts";
import { USAGE_SCHEMA, type UsageRecord } from "./record.ts";

/** A ready-to-send request body. */
export interface EncodedBatch {
  contentType: string;
  body: string;
}

/** Version of the JSON batch envelope. */
export const BATCH_SCHEMA = "cy.sidecar.usage.batch.v1";

/** Encodes records in the configured format. */
export function encodeBatch(
  format: UsageFormat,
  records: UsageRecord[],
  instance: string,
): EncodedBatch {
  if (format === "cloudevents") {
    // One CloudEvent per record; `id` + `source` is unique per record, which
    // is what CloudEvents consumers (OpenMeter among them) deduplicate on.
    const events = records.map((r) => ({
      specversion: "1.0",
      id: r.id,
      source: `cy-sidecar/${r.sidecar_instance}`,
      type: USAGE_SCHEMA,
      subject: r.session_id,
      time: r.ended_at,
      datacontenttype: "application/json",
      data: r,
    }));
    return {
      contentType: "application/cloudevents-batch+json",
      body: JSON.stringify(events),
    };
  }
  return {
    contentType: "application/json",
    body: JSON.stringify({
      schema: BATCH_SCHEMA,
      sidecar_instance: instance,
      sent_at: new Date().toISOString(),
      records,
    }),
  };
}

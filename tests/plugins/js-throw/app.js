// js-throw: a JavaScript test plugin whose `process` throws for records of table "Throw",
// naming the record by its sequence (its origin, asked of the host), so that the tests can
// check the exception's text reaches the dead letter.
import { originOf } from "screamer:plugin/batch@0.3.0";

export const processor = {
  info() {
    return { name: "js-throw", version: "0.1.0" };
  },
  init(config) {},
  process(batch) {
    return batch.map((record, index) => {
      if (record.tableName === "Throw") {
        const sequence = originOf(index).recordSequence;
        throw new Error(`boom from javascript on ${record.tableName} ${sequence}`);
      }
      return { tag: "keep" };
    });
  },
};

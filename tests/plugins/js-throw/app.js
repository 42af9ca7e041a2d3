// js-throw: a JavaScript test plugin whose `process` throws for records of table "Throw",
// so that the tests can check the exception's text reaches the dead letter.
export const processor = {
  info() {
    return { name: "js-throw", version: "0.1.0" };
  },
  init(config) {},
  process(batch) {
    return batch.map((record) => {
      if (record.tableName === "Throw") {
        throw new Error(`boom from javascript on ${record.tableName}`);
      }
      return { tag: "keep" };
    });
  },
};

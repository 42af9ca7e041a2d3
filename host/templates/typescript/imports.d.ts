// The host's imports, as `import { log } from "screamer:plugin/log@0.3.0"` names them.
declare module "screamer:plugin/log@0.3.0" {
  export function log(level: import("./plugin").Level, message: string): void;
}
declare module "screamer:plugin/batch@0.3.0" {
  export function originOf(index: number): import("./plugin").Origin | undefined;
}

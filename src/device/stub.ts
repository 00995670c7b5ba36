// The one object per (project, device): how every caller names it.
import type { Env } from '../env';

export function deviceStub(env: Pick<Env, 'DEVICE'>, projectId: string, deviceId: string) {
  return env.DEVICE.get(env.DEVICE.idFromName(`${projectId}:${deviceId}`));
}

// sessync: the Node.js SDK of the sessync session store (protocol.md, client port).
export { Client, Session, VERSION } from './client.js';
export * from './errors.js';
export { DEFAULT_LIMITS } from './wire.js';

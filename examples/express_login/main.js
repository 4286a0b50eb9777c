// `npm start [-- HOST:PORT]`: the demo of demo.js, until Ctrl-C.
import { start } from './demo.js';

const [host, port] = (process.argv[2] ?? '127.0.0.1:8080').split(':');
const demo = await start(3, { host, port: Number(port) });
console.log(`balancer on http://${demo.balancer} -> instances ${demo.instances.join(', ')}`);
console.log(`  curl -c jar -b jar 'http://${demo.balancer}/login?user=alice'`);
console.log(`  curl -c jar -b jar http://${demo.balancer}/me     # repeat: each lands on the next instance`);
console.log(`  curl -c jar -b jar 'http://${demo.balancer}/cart?add=book'`);
console.log('Ctrl-C stops it.');
process.once('SIGINT', async () => { await demo.stop(); process.exit(0); });

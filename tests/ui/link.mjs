// The van's cell link, for the story: a UDP relay between the agent and the hub's sync
// port (QUIC runs over it) that can be cut and restored, and slowed to a rate. Cut, it
// drops every datagram both ways, as a modem out of coverage does; slowed, datagrams from
// the van queue behind the rate (the uplink is what a cell modem lacks).
import dgram from 'node:dgram';

export class Link {
  /** Relays 127.0.0.1:<port it picks> to 127.0.0.1:hubPort. */
  static async open(hubPort) {
    const link = new Link(hubPort);
    await new Promise((resolve) => link.front.bind(0, '127.0.0.1', resolve));
    return link;
  }

  constructor(hubPort) {
    this.hubPort = hubPort;
    this.up = true;
    // Bytes a second from the van, or 0 for no limit; and when the queue is next free.
    this.rate = 0;
    this.freeAt = 0;
    this.sentUp = 0;
    this.front = dgram.createSocket('udp4');
    // One socket towards the hub per van address, so the hub's answers find their way back.
    this.backs = new Map();
    this.front.on('message', (msg, from) => {
      if (!this.up) return;
      const key = `${from.address}:${from.port}`;
      let back = this.backs.get(key);
      if (!back) {
        back = dgram.createSocket('udp4');
        back.on('message', (reply) => {
          if (this.up) this.front.send(reply, from.port, from.address);
        });
        back.bind(0, '127.0.0.1');
        this.backs.set(key, back);
      }
      this.sentUp += msg.length;
      if (!this.rate) {
        back.send(msg, this.hubPort, '127.0.0.1');
        return;
      }
      const now = Date.now();
      this.freeAt = Math.max(this.freeAt, now) + (msg.length * 1000) / this.rate;
      // A queue longer than two seconds drops, as a modem's buffer does.
      if (this.freeAt - now > 2000) { this.freeAt -= (msg.length * 1000) / this.rate; return; }
      setTimeout(() => { if (this.up) back.send(msg, this.hubPort, '127.0.0.1'); }, this.freeAt - now);
    });
  }

  get port() { return this.front.address().port; }

  cut() { this.up = false; }

  /** Limits the van's uplink to `bytesPerSecond` (0: no limit). */
  slow(bytesPerSecond) { this.rate = bytesPerSecond; this.freeAt = 0; }

  restore() { this.up = true; }

  close() {
    this.front.close();
    for (const b of this.backs.values()) b.close();
  }
}

// WebRTC with the server: one PeerLink per stream card, either viewing the annotated stream
// (mode "view") or publishing this browser's camera (mode "publish"). Signalling is one
// non-trickle offer/answer through POST /api/rtc/offer; hanging up is a DELETE of the peer.
// The card owns retries and what the user sees; this module owns the RTCPeerConnection.

import { api } from "./api.js";

const ICE_GATHER_TIMEOUT_MS = 3000;

function waitForIceGathering(pc, timeoutMs = ICE_GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs); // send what we have rather than hang
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function preferMaintainResolution(sender) {
  // Chrome drops to 480x360 under CPU load unless told to keep the resolution.
  try {
    const p = sender.getParameters();
    if (p.degradationPreference === "maintain-resolution") return;
    p.degradationPreference = "maintain-resolution";
    await sender.setParameters(p);
  } catch (err) {
    console.warn("degradationPreference not applied:", err);
  }
}

function peerPath(peerId) {
  return `/api/rtc/peers/${encodeURIComponent(peerId)}`;
}

export class PeerLink {
  // onTrack(mediaStream): the server's (annotated) video arrived.
  // onLost(reason): the connection failed or closed while it was the current one.
  constructor({ onTrack, onLost }) {
    this.pc = null;
    this.peerId = null; // the server's id of our peer, once answered
    this.onTrack = onTrack;
    this.onLost = onLost;
  }

  // Close our side only (the server's peer is gone, or will notice by itself).
  close(pc = this.pc) {
    if (!pc) return;
    pc.ontrack = null;
    pc.onconnectionstatechange = null;
    pc.close();
    if (this.pc === pc) this.pc = null;
  }

  // Forget the server's peer and close our side.
  drop() {
    this.peerId = null;
    this.close();
  }

  // Tell the server first, then close our side: closed first, the server notices the
  // hang-up by itself and the DELETE would race it to a 404. ``unloading``: the page is
  // going away, so the DELETE is a keepalive request nobody waits for.
  async hangUp(unloading = false) {
    const peerId = this.peerId;
    const pc = this.pc;
    this.peerId = null;
    if (peerId) {
      const request = api(peerPath(peerId), { method: "DELETE", keepalive: unloading }).catch(
        () => {},
      );
      if (!unloading && pc) {
        pc.onconnectionstatechange = null;
        await Promise.race([request, new Promise((r) => setTimeout(r, 2000))]);
      }
    }
    this.close(pc);
  }

  // Offer, wait for the answer, connect. Throws Error("cancelled") when another open() or
  // a close() superseded this one meanwhile; returns the server's answer
  // ({sdp, type, peer_id, stream_id}).
  async open(mode, streamId, camera = null) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.ontrack = (event) => this.onTrack(event.streams[0] || new MediaStream([event.track]));
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const s = pc.connectionState;
      if (s === "failed" || s === "closed") this.onLost(`connection ${s}`);
    };
    let sender = null;
    if (mode === "publish") {
      const [track] = camera.getVideoTracks();
      const tr = pc.addTransceiver(track, { direction: "sendrecv", streams: [camera] });
      sender = tr.sender;
      await preferMaintainResolution(sender);
    } else {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (this.pc !== pc) throw new Error("cancelled");
    const body = { sdp: pc.localDescription.sdp, type: "offer", mode, stream_id: streamId };
    const answer = await api("/api/rtc/offer", { method: "POST", json: body });
    if (this.pc !== pc) {
      api(peerPath(answer.peer_id), { method: "DELETE" }).catch(() => {});
      throw new Error("cancelled");
    }
    this.peerId = answer.peer_id;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    if (sender) await preferMaintainResolution(sender);
    return answer;
  }
}

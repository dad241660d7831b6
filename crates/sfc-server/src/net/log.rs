//! Formats the conversation's log lines with `tracing`.

use crate::session::{LogLine, RequestLog};
use sfc_proto::ResponseCode;
use std::net::SocketAddr;

/// Emits one line for `peer`.
pub(crate) fn emit(peer: SocketAddr, line: LogLine) {
    match line {
        LogLine::Request(request) => emit_request(peer, request),
        LogLine::AddressRepinned { client, before } => tracing::warn!(
            %peer,
            client = %client.short(),
            %before,
            "key exchange from another address: requests for this client now accepted only from here (--pin-address)"
        ),
        LogLine::FailureBudgetSpent => tracing::warn!(
            %peer,
            "too many failed requests from this address: connection closed (rate limit)"
        ),
        LogLine::AbandonedMidPacket { client, file } => tracing::info!(
            %peer,
            client = %client.short(),
            file = file.as_str(),
            "upload abandoned: connection ended mid-packet"
        ),
        LogLine::RefusedMidPacket { client, .. } => tracing::debug!(
            %peer,
            client = %client.short(),
            "connection ended mid-packet of a refused file packet"
        ),
        LogLine::AbandonedWithConnection { client, file } => tracing::info!(
            %peer,
            client = %client.short(),
            file = file.as_str(),
            "upload abandoned: the client's connection ended between two packets"
        ),
    }
}

fn emit_request(peer: SocketAddr, line: RequestLog) {
    let RequestLog {
        code,
        client,
        version,
        payload,
        packet,
        reply,
        elapsed,
        detail,
        file,
        cause: _,
        upload_left: _,
    } = line;
    // An 828 without a reply is an intermediate packet or part of a refused transfer
    // (rule S12): per packet, so at debug.
    let intermediate = packet.is_some_and(|(_, _, intermediate)| intermediate)
        || (code == sfc_proto::RequestCode::SendFile.as_u16() && reply.is_none());
    let refused = reply == Some(ResponseCode::ServerError);
    // Intermediate packets log at debug: skip formatting them (per packet) when off.
    if intermediate && !refused && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let packet = packet.map(|(number, total, _)| format!("{number}/{total}"));
    let client = client.map_or_else(|| "-".to_string(), |c| c.short());
    let reply = reply.map_or_else(|| "none".to_string(), |c| c.as_u16().to_string());
    let ms = (elapsed.as_secs_f64() * 10_000.0).round() / 10.0;
    let detail = detail.as_deref();
    let file = file.as_ref().map(|name| name.as_str());
    if refused {
        tracing::warn!(%peer, %client, code, version, payload, file, packet, %reply, ms, detail, "request refused")
    } else if intermediate {
        tracing::debug!(%peer, %client, code, version, payload, packet, %reply, ms, "packet")
    } else {
        tracing::info!(%peer, %client, code, version, payload, file, packet, %reply, ms, detail, "request")
    }
}

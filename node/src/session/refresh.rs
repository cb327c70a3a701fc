//! `refresh`: a new token for the same user replaces the session's, and every
//! subscription it no longer permits ends with one `FORBIDDEN` naming them.

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use serde_json::{json, Value};
use sluice_common::{
    protocol::{FrameType, ServerFrame},
    ErrorCode,
};

use super::{
    actor::Session,
    subscribe::{Refusal, Refusals},
    SessionEnd,
};

impl<S, E> Session<S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    /// Replaces the session's token with a fresh one for the same `sub`. A bad token
    /// ends the session (1008); with auth off there is nothing to replace.
    pub(super) async fn refresh(
        &mut self,
        token: &str,
        correlation_id: Option<Value>,
    ) -> Result<(), SessionEnd> {
        if let Some(current) = &self.identity {
            let verdict = match self.ctx.auth.verify(token) {
                Ok(new) if new.sub == current.sub => Ok(new),
                Ok(_) => Err((
                    ErrorCode::Forbidden,
                    "refresh token is for another user".to_owned(),
                )),
                Err(e) => Err((e.code(), e.to_string())),
            };
            match verdict {
                Ok(new) => self.identity = Some(Box::new(new)),
                Err((code, msg)) => {
                    self.ctx.metrics.auth_failures.increment(1);
                    let f = ServerFrame::error(code, &msg).with_correlation_id(correlation_id);
                    self.send_frame(&f).await?;
                    return Err(SessionEnd::Policy(format!("refresh refused: {msg}")));
                }
            }
        }
        let expires = self.identity.as_ref().map(|i| i.expires_at);
        let ack = ServerFrame::new(FrameType::Ack)
            .with_correlation_id(correlation_id.clone())
            .with_payload(json!({ "refreshed": true, "expires_at": expires }));
        self.send_frame(&ack).await?;
        self.drop_unpermitted(correlation_id).await
    }

    /// After a refresh: ends every subscription the new token no longer permits, with
    /// one `FORBIDDEN` error naming them.
    async fn drop_unpermitted(&mut self, correlation_id: Option<Value>) -> Result<(), SessionEnd> {
        let identity = self.identity.as_deref();
        let lost: Vec<_> = self
            .subs
            .keys()
            .filter(|t| !crate::auth::may_read(identity, t))
            .cloned()
            .collect();
        let mut refusals = Refusals::default();
        let lost_patterns: Vec<_> = self
            .pattern_filters()
            .into_iter()
            .filter(|f| !crate::auth::may_read_filter(identity, f))
            .collect();
        for topic in lost {
            self.unsubscribe(&topic);
            let msg = "the refreshed token may not read this topic; unsubscribed";
            refusals.push(Refusal::new(ErrorCode::Forbidden, msg, topic.as_str()).without_strike());
        }
        for filter in lost_patterns {
            self.unsubscribe_pattern(&filter);
            let msg = "the refreshed token may not read this topic; unsubscribed";
            refusals.push(
                Refusal::new(ErrorCode::Forbidden, msg, &filter.to_string()).without_strike(),
            );
        }
        for f in refusals.into_frames(correlation_id) {
            self.send_frame(&f).await?;
        }
        Ok(())
    }
}

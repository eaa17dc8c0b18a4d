use super::*;

/// The size of the future an async fn returns, without calling it.
fn size_of_future<F, Fut>(_: F) -> usize
where
    F: FnOnce(Socket, Start, Arc<Dashboards>, Identity) -> Fut,
{
    std::mem::size_of::<Fut>()
}

/// Every dashboard's tasks hold these futures for as long as it is connected: a
/// rare path inlined in one costs memory per connection (the 1009 closing path
/// once made the writer's 5,984 bytes, 8 KiB per connection in all; boxed, 1,752).
#[test]
fn a_connection_future_stays_small() {
    let size = size_of_future(serve);
    assert!(size <= 3 * 1024, "ws::serve's future is {size} bytes");
    // The reader's task lives as long: the engine's commands awaited inline once
    // made it 1,752 bytes; in one boxed call, 608.
    fn of<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Reader, futures_util::stream::SplitStream<Socket>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }
    let reader = of(Reader::run);
    assert!(reader <= 640, "the reader's future is {reader} bytes");
}

/// A socket write that never completes (a client that stopped reading).
fn stuck_write() -> impl std::future::Future<Output = Result<(), WsError>> {
    std::future::pending()
}

/// A connection's signals, the gateway's shutdown and grace tokens, and the
/// writer's stops over them.
fn stops(expires: Option<Duration>) -> (Signals, [CancellationToken; 2], Stops) {
    let force = CancellationToken::new();
    let shutdown = force.child_token();
    let signals = Signals::new(&shutdown, 0);
    let expires = expires.map(|d| tokio::time::Instant::now() + d);
    let stops = Stops::new(&signals, &force, expires);
    (signals, [shutdown, force], stops)
}

#[tokio::test]
async fn a_blocked_write_ends_when_cut_off_as_slow_or_forced_not_when_gone() {
    for (slow, under_way) in [(true, true), (false, true), (true, false), (false, false)] {
        let (signals, [shutdown, force], mut stops) = stops(None);
        let write = tokio::spawn(async move { stops.guard(stuck_write()).await });
        if under_way {
            // The guard is waiting on the write when the rest happens.
            tokio::task::yield_now().await;
        }
        // The client going away or a shutdown starting does not abandon a write
        // under way: the drain goes on until the grace runs out (force).
        signals.end(Disconnect::GONE);
        shutdown.cancel();
        tokio::task::yield_now().await;
        assert!(!write.is_finished());
        if slow {
            signals.cut_off.cut();
        } else {
            force.cancel();
        }
        let end = tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .expect("the write was not abandoned")
            .unwrap();
        let expected = match slow {
            true => Disconnect::SLOW_CONSUMER,
            false => Disconnect::DROPPED,
        };
        assert_eq!(end, Err(expected));
    }
}

#[tokio::test]
async fn a_write_under_way_finishes_when_the_client_goes_or_the_gateway_stops() {
    let (signals, [shutdown, _force], mut stops) = stops(None);
    let (done, wait) = tokio::sync::oneshot::channel::<()>();
    let write = tokio::spawn(async move {
        stops
            .guard(async move {
                let _ = wait.await;
                Ok(())
            })
            .await
    });
    tokio::task::yield_now().await;
    signals.end(Disconnect::GONE);
    shutdown.cancel();
    tokio::task::yield_now().await;
    assert!(!write.is_finished());
    done.send(()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the write did not finish")
        .unwrap();
    assert!(end.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_blocked_write_ends_when_the_token_expires_during_a_shutdown() {
    let (_signals, [shutdown, _force], mut stops) = stops(Some(Duration::from_secs(60)));
    shutdown.cancel();
    let end = stops.guard(stuck_write()).await;
    assert_eq!(end, Err(Disconnect::TOKEN_EXPIRED));
}

#[tokio::test(start_paused = true)]
async fn a_blocked_write_ends_when_the_token_expires() {
    let (_signals, _tokens, mut stops) = stops(Some(Duration::from_secs(60)));
    let end = stops.guard(stuck_write()).await;
    assert_eq!(end, Err(Disconnect::TOKEN_EXPIRED));
}

//! Bulk reads of the shared tier: every key of a kind, on every node (each master of a
//! cluster), and many values at once — on a connection of their own with a generous
//! timeout, for loading a whole table (the offline gates' feed), never on a tap's path.

use std::time::Duration;

use redis::Value;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::{Connection, SharedError, SharedTier};

/// Keys asked for per `SCAN` step and values per `MGET`.
const BATCH: usize = 1000;
/// Longest wait for one bulk command.
const BULK_TIMEOUT: Duration = Duration::from_secs(10);

/// Walks keys and reads values in bulk.
pub struct BulkReader {
    connection: Connection,
    /// The nodes still to scan, the one being scanned last (`None`: the one server).
    nodes: Vec<Option<(String, u16)>>,
    cursor: u64,
    pattern: String,
}

impl SharedTier {
    /// A bulk reader of the keys `<prefix>:<kind>:*`.
    pub async fn bulk_reader(&self, kind: &str) -> Result<BulkReader, SharedError> {
        let mut connection = self.dedicated(BULK_TIMEOUT)?;
        let nodes = match &mut connection {
            Connection::Single(_) => vec![None],
            Connection::Cluster(cluster) => {
                let slots: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(cluster)
                    .await
                    .map_err(SharedError::Connection)?;
                masters(&slots)?.into_iter().map(Some).collect()
            }
        };
        Ok(BulkReader {
            connection,
            nodes,
            cursor: 0,
            pattern: self.key(kind, "*"),
        })
    }
}

impl BulkReader {
    /// The next keys found, `None` once every node was walked. A key may come twice
    /// (SCAN's guarantee); one that exists throughout comes at least once.
    pub async fn next_keys(&mut self) -> Result<Option<Vec<String>>, SharedError> {
        while let Some(node) = self.nodes.last() {
            let mut scan = redis::cmd("SCAN");
            scan.arg(self.cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(BATCH);
            let reply = match (&mut self.connection, node) {
                (Connection::Cluster(cluster), Some((host, port))) => {
                    let to = SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    };
                    cluster.route_command(scan, RoutingInfo::SingleNode(to)).await
                }
                (connection, _) => scan.query_async::<Value>(connection).await,
            }
            .map_err(SharedError::Connection)?;
            let (cursor, keys): (u64, Vec<String>) =
                redis::from_redis_value(reply).map_err(|e| SharedError::Rejected(e.into()))?;
            self.cursor = cursor;
            if cursor == 0 {
                self.nodes.pop();
            }
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }

    /// The values of `keys` (`None` where a key is missing), in their order.
    pub async fn get_many(&mut self, keys: &[String]) -> Result<Vec<Option<String>>, SharedError> {
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(BATCH) {
            let got: Vec<Option<String>> = redis::cmd("MGET")
                .arg(batch)
                .query_async(&mut self.connection)
                .await
                .map_err(SharedError::Connection)?;
            values.extend(got);
        }
        Ok(values)
    }
}

/// The masters' addresses in a `CLUSTER SLOTS` reply: the first node of each range.
fn masters(slots: &Value) -> Result<Vec<(String, u16)>, SharedError> {
    let unreadable = || {
        SharedError::Rejected(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "CLUSTER SLOTS reply not understood",
        )))
    };
    let Value::Array(ranges) = slots else {
        return Err(unreadable());
    };
    let mut masters = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(unreadable());
        };
        let master = fields.get(2).ok_or_else(unreadable)?;
        let (host, port): (String, u16) = match master {
            Value::Array(node) if node.len() >= 2 => (
                redis::from_redis_value_ref(&node[0]).map_err(|_| unreadable())?,
                redis::from_redis_value_ref(&node[1]).map_err(|_| unreadable())?,
            ),
            _ => return Err(unreadable()),
        };
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Ok(masters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn masters_are_the_first_node_of_each_range_once() {
        let range =
            |from, to, master| Value::Array(vec![Value::Int(from), Value::Int(to), master, node("10.0.0.9", 7009)]);
        let slots = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7000)),
            range(5461, 10922, node("127.0.0.1", 7001)),
            range(10923, 16383, node("127.0.0.1", 7000)),
        ]);
        assert_eq!(
            masters(&slots).unwrap(),
            [("127.0.0.1".to_owned(), 7000), ("127.0.0.1".to_owned(), 7001)]
        );
        assert!(masters(&Value::Int(3)).is_err());
    }
}

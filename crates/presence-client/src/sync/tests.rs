use super::*;

#[test]
fn dropping_acknowledged_ops_keeps_the_handoffs_for_a_full_sync() {
    let mut queue = OpQueue {
        ops: VecDeque::from(vec![
            Op::connect("s1", "u", None),
            Op::handoff("s1", 10),
            Op::join("s2", "r"),
        ]),
        first_seq: 5,
        next_seq: 8,
        full_pending: false,
        overflows: 0,
    };
    assert_eq!(queue.drop_below(7), [Op::handoff("s1", 10)]);
    assert_eq!(queue.first_seq, 7);
    assert_eq!(queue.ops.len(), 1);
    assert!(queue.drop_below(3).is_empty(), "already dropped");
    queue.drop_below(100);
    assert_eq!((queue.first_seq, queue.ops.len()), (8, 0));
}

//! A small builder for ONNX graphs on `tract_onnx::pb` (prost) messages: nodes, initializers,
//! inputs and outputs, with value names that say where a tensor comes from
//! (`/model/layers.3/attn/q_proj/Gemm_output_0`), and every op checked against the opset.

use std::collections::HashSet;

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

/// Ops the builder may emit, with the first opset whose signature the builder writes.
/// ReduceMean changed at 18 (axes moved from attribute to input): `reduce_mean` handles both.
const OPS: &[(&str, i64)] = &[
    ("Add", 14),
    ("And", 7),
    ("Cast", 13),
    ("Concat", 13),
    ("DequantizeLinear", 13),
    ("Div", 14),
    ("Expand", 13),
    ("Gather", 13),
    ("Gemm", 13),
    ("LessOrEqual", 16),
    ("MatMul", 13),
    ("Mul", 14),
    ("Neg", 13),
    ("Range", 11),
    ("Reciprocal", 13),
    ("ReduceMean", 13),
    ("ReduceSum", 13),
    ("Reshape", 14),
    ("ScatterElements", 13),
    ("Shape", 15),
    ("Sigmoid", 13),
    ("Slice", 13),
    ("Softmax", 13),
    ("Sqrt", 13),
    ("Sub", 14),
    ("TopK", 11),
    ("Transpose", 13),
    ("Unsqueeze", 13),
    ("Where", 16),
];

/// ONNX Runtime's contrib ops (domain `com.microsoft`, version 1), which tract also reads.
const MICROSOFT_OPS: &[&str] = &[
    "GatherBlockQuantized",
    "GroupQueryAttention",
    "MatMulNBits",
    "MoE",
    "RotaryEmbedding",
    "SkipSimplifiedLayerNormalization",
];
/// ONNX Runtime's contrib ops registered in the default domain.
const RUNTIME_DEFAULT_DOMAIN_OPS: &[&str] = &["SimplifiedLayerNormalization"];
pub const MICROSOFT_DOMAIN: &str = "com.microsoft";

/// Element types the exports use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn data_type(self) -> i32 {
        match self {
            Elem::F32 => DataType::Float as i32,
            Elem::F16 => DataType::Float16 as i32,
            Elem::I64 => DataType::Int64 as i32,
            Elem::I32 => DataType::Int32 as i32,
            Elem::I8 => DataType::Int8 as i32,
            Elem::U8 => DataType::Uint8 as i32,
            Elem::Bool => DataType::Bool as i32,
        }
    }
}

/// A dimension of a graph input or output: fixed, or named and dynamic.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// Where an initializer's bytes live.
pub enum Data {
    Raw(Vec<u8>),
    /// In the external data file next to the model.
    External {
        offset: u64,
        length: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("op {op} is not one the graph builder supports")]
    UnknownOp { op: String },
    #[error("op {op} (node {node}) needs opset {needed}, the export targets opset {opset}")]
    Opset { op: String, node: String, needed: i64, opset: i64 },
    #[error("layer {layer} routes to experts but the description lists none")]
    NoExperts { layer: String },
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: value, ..Default::default() }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: value, ..Default::default() }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Named(s) => dimension::Value::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem.data_type(),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

pub struct GraphBuilder {
    opset: i64,
    external_file: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
    constants: usize,
    uses_microsoft: bool,
}

impl GraphBuilder {
    /// `external_file`: the data file external initializers point into (a bare file name).
    pub fn new(opset: i64, external_file: &str) -> Self {
        Self {
            opset,
            external_file: external_file.into(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            names: HashSet::new(),
            constants: 0,
            uses_microsoft: false,
        }
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem: Elem, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    fn unique(&mut self, name: String) -> String {
        if self.names.insert(name.clone()) {
            return name;
        }
        (1..).map(|i| format!("{name}_{i}")).find(|n| self.names.insert(n.clone())).unwrap_or(name)
    }

    fn check(&self, op: &str, node: &str) -> Result<(), BuildError> {
        if MICROSOFT_OPS.contains(&op) || RUNTIME_DEFAULT_DOMAIN_OPS.contains(&op) {
            return Ok(());
        }
        let needed = OPS
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, v)| *v)
            .ok_or_else(|| BuildError::UnknownOp { op: op.into() })?;
        if self.opset < needed {
            return Err(BuildError::Opset { op: op.into(), node: node.into(), needed, opset: self.opset });
        }
        Ok(())
    }

    /// Adds a node named `{scope}/{op}` with one output, and returns that output's name.
    pub fn node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> Result<String, BuildError> {
        let name = self.unique(format!("{scope}/{op}"));
        let output = format!("{name}_output_0");
        self.push(name, op, inputs, &[&output], attributes)?;
        Ok(output)
    }

    /// Adds a node named `{scope}/{op}` with `count` outputs, and returns their names.
    pub fn node_outputs(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        count: usize,
        attributes: Vec<AttributeProto>,
    ) -> Result<Vec<String>, BuildError> {
        let name = self.unique(format!("{scope}/{op}"));
        let outputs: Vec<String> = (0..count).map(|i| format!("{name}_output_{i}")).collect();
        let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        self.push(name, op, inputs, &refs, attributes)?;
        Ok(outputs)
    }

    /// Adds a node whose outputs carry given names (graph outputs such as `present.0.key`).
    pub fn node_into(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> Result<(), BuildError> {
        let name = self.unique(format!("{scope}/{op}"));
        self.push(name, op, inputs, outputs, attributes)
    }

    fn push(
        &mut self,
        name: String,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> Result<(), BuildError> {
        self.check(op, &name)?;
        let microsoft = MICROSOFT_OPS.contains(&op);
        self.uses_microsoft |= microsoft;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name,
            op_type: op.into(),
            domain: if microsoft { MICROSOFT_DOMAIN.into() } else { String::new() },
            attribute,
            doc_string: String::new(),
        });
        Ok(())
    }

    /// `ReduceMean` over `axes`, keeping dims, in the form the opset wants.
    pub fn reduce_mean(&mut self, scope: &str, x: &str, axes: &[i64]) -> Result<String, BuildError> {
        if self.opset >= 18 {
            let axes = self.const_i64(axes, &[axes.len() as i64]);
            self.node(scope, "ReduceMean", &[x, &axes], vec![attr_int("keepdims", 1)])
        } else {
            self.node(scope, "ReduceMean", &[x], vec![attr_ints("axes", axes), attr_int("keepdims", 1)])
        }
    }

    /// A named initializer.
    pub fn initializer(&mut self, name: &str, elem: Elem, dims: &[i64], data: Data) -> String {
        let mut tensor = TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: elem.data_type(),
            ..Default::default()
        };
        match data {
            Data::Raw(bytes) => tensor.raw_data = bytes,
            Data::External { offset, length } => {
                tensor.data_location = Some(DataLocation::External as i32);
                tensor.external_data = vec![
                    StringStringEntryProto { key: "location".into(), value: self.external_file.clone() },
                    StringStringEntryProto { key: "offset".into(), value: offset.to_string() },
                    StringStringEntryProto { key: "length".into(), value: length.to_string() },
                ];
            }
        }
        self.names.insert(name.to_string());
        self.initializers.push(tensor);
        name.to_string()
    }

    /// A small i64 constant (shapes, axes, indices), stored as an initializer.
    pub fn const_i64(&mut self, values: &[i64], dims: &[i64]) -> String {
        self.constants += 1;
        let name = format!("/model/constants/i64_{}", self.constants);
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(&name, Elem::I64, dims, Data::Raw(bytes))
    }

    /// A small f32 constant.
    pub fn const_f32(&mut self, values: &[f32], dims: &[i64]) -> String {
        self.constants += 1;
        let name = format!("/model/constants/f32_{}", self.constants);
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(&name, Elem::F32, dims, Data::Raw(bytes))
    }

    /// Adds a node with several outputs named `{scope}/{op}_output_{i}`; `wanted[i] == false`
    /// leaves optional output `i` unset (its name is then empty).
    pub fn node_multi(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        wanted: &[bool],
        attributes: Vec<AttributeProto>,
    ) -> Result<Vec<String>, BuildError> {
        let name = self.unique(format!("{scope}/{op}"));
        let outputs: Vec<String> = wanted
            .iter()
            .enumerate()
            .map(|(i, &w)| if w { format!("{name}_output_{i}") } else { String::new() })
            .collect();
        // Unset outputs at the end are left out rather than named "".
        let used = outputs.iter().rposition(|o| !o.is_empty()).map_or(0, |i| i + 1);
        let refs: Vec<&str> = outputs[..used].iter().map(String::as_str).collect();
        self.push(name, op, inputs, &refs, attributes)?;
        Ok(outputs)
    }

    pub fn finish(self, graph_name: &str, metadata: &[(String, String)]) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto { domain: String::new(), version: self.opset }];
        if self.uses_microsoft {
            opset_import.push(OperatorSetIdProto { domain: MICROSOFT_DOMAIN.into(), version: 1 });
        }
        ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: env!("CARGO_PKG_NAME").into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: graph_name.into(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() })
                .collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_scoped_and_unique() {
        let mut g = GraphBuilder::new(17, "model.onnx_data");
        let x = g.input("x", Elem::F32, &[Dim::Named("batch_size"), Dim::Fixed(4)]);
        let a = g.node("/model/layers.0/mlp", "Sigmoid", &[&x], vec![]).unwrap();
        let b = g.node("/model/layers.0/mlp", "Sigmoid", &[&a], vec![]).unwrap();
        assert_eq!(a, "/model/layers.0/mlp/Sigmoid_output_0");
        assert_eq!(b, "/model/layers.0/mlp/Sigmoid_1_output_0");
    }

    #[test]
    fn reduce_mean_follows_the_opset() {
        let mut g17 = GraphBuilder::new(17, "d");
        g17.reduce_mean("/n", "x", &[-1]).unwrap();
        let mut g18 = GraphBuilder::new(18, "d");
        g18.reduce_mean("/n", "x", &[-1]).unwrap();
        let (m17, m18) = (g17.finish("g", &[]), g18.finish("g", &[]));
        assert_eq!(m17.graph.as_ref().unwrap().node[0].input.len(), 1);
        assert_eq!(m17.graph.as_ref().unwrap().node[0].attribute[0].name, "axes");
        assert_eq!(m18.graph.as_ref().unwrap().node[0].input.len(), 2);
    }

    #[test]
    fn ops_are_checked_against_the_opset() {
        let mut g = GraphBuilder::new(13, "d");
        let err = g.node("/n", "Where", &["a", "b", "c"], vec![]).unwrap_err();
        assert_eq!(err.to_string(), "op Where (node /n/Where) needs opset 16, the export targets opset 13");
        assert!(matches!(g.node("/n", "Trilu", &[], vec![]), Err(BuildError::UnknownOp { .. })));
    }
}
